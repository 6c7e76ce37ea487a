"""Test support that is not library code: fault injection for the crash-safety tests."""
