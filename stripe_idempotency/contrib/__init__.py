"""Integrations with other libraries, each imported only by the projects that use it."""
