"""The generation engine: framework-free (no Django import, DESIGN.md decision 2)."""
