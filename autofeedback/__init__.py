"""autofeedback: align text-to-image diffusion models with AI feedback instead of human labels."""

__version__ = "0.1.0"
