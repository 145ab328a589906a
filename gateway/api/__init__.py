"""The HTTP layer: routes, wire models, error rendering, admission control. Imports no runtime."""
