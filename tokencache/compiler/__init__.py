"""The backend entry point, graph analysis and inner backends."""
