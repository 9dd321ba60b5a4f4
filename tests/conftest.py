"""Shared fixtures.  Fakes are real loopback servers; nothing here mocks aiohttp."""
