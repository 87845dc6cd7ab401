"""Configuration: the recipe's blocks as dataclasses, and the checks that need no other layer."""
