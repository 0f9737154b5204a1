"""One module per op family, each defining `SUITE` (a `harness.Suite`); see README "Adding a suite"."""
