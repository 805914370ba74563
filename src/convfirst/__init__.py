"""ConvFirst study package."""
