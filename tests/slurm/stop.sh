#!/usr/bin/env bash
# Stop the test cluster started by tests/slurm/start.sh (by its pid files).
STATE=${SDEXP_SLURM_STATE:-/tmp/sdexp-slurm}
for pid_file in "$STATE"/run/slurmd.pid "$STATE"/run/slurmctld.pid "$STATE"/run/slurmdbd.pid \
                "$STATE"/mysql/mariadb.pid; do
  [ -f "$pid_file" ] && kill "$(cat "$pid_file")" 2>/dev/null
done
pkill -x munged 2>/dev/null
exit 0
