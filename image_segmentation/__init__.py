"""Train ICNet on a whitelisted subset of ADE20K and ship it to iPhones as Core ML."""

__version__ = "0.1.0"
