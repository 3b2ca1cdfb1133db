"""Drivers for the provider tab in headless Chromium, used by the end-to-end tests and the benches: code that runs
on a developer's machine, neither on the server nor on a provider's."""
