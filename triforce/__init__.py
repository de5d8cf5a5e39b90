"""Thor Triforce: build, deploy and validate a fast Pi0.5 runtime for Jetson AGX Thor (SM110)."""

__version__ = "0.1.0"
