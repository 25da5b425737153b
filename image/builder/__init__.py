"""Builds the EasyFaaS appliance image from image/appliance.toml (see docs/appliance.md)."""
