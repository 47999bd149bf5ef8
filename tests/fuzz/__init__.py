"""Fuzzing: network targets against a real gateway, in-process atheris targets, the campaign.

See docs/fuzzing.md.  ``python -m tests.fuzz --seconds 600`` runs a campaign;
``python -m tests.fuzz.capture`` re-records the seed corpora.
"""
