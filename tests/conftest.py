import twisted.trial.unittest  # noqa: F401  (makes pytest honour trial todo/skip)
