"""`nascloud estimate`, `prices`, `plan` (issue 2)."""
