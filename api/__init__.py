"""deferred-diffusion: a self-hosted generative AI server for VFX pipelines."""

__version__ = "0.1.0"
