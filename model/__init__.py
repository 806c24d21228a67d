"""S4D: diagonal state space models, their exact recurrent form, training and export.

This package knows nothing of the server; see model/README.md for the API others rely on.
"""
