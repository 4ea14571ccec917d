"""Hydra command-line overrides: a value quoted by sdexp reads back as itself."""

from __future__ import annotations

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from sdexp.overrides import quote_override

VALUES = [
    "runs/model=resnet20,seed=0",  # what a run folder's name holds: = and ,
    "runs/[4,8]",
    "it's",
    "ends with a backslash\\",
    "a backslash before a quote\\'",
    "seed=$\\{hydra\\:job.num\\}",  # Hydra's folder name for seed=${hydra:job.num}: kept as it is
    "",
]


@pytest.mark.parametrize("value", VALUES)
def test_a_quoted_value_reads_back_as_itself(value: str) -> None:
    assert OverridesParser.create().parse_override(f"hydra.run.dir={quote_override(value)}").value() == value
