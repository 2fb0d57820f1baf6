"""nascloud: plan, launch and babysit AutoKeras searches on spot GPUs, within a budget."""

__version__ = "0.1.0"
