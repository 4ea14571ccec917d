"""sdexp: stochastic-depth ResNet experiments (Huang et al. 2016), configured with Hydra."""

__version__ = "0.1.0"
