"""pond: a data pond, not a data lake — curate, synthesise, train, evaluate."""
__version__ = "0.1.0"
