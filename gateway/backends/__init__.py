"""Scoring runtimes behind one small interface (`base.Scorer`)."""
