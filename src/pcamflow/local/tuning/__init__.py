"""Local tuning: ranges to Optuna samplers and pruners (:mod:`.search`), the study's storage,
lock and trials (:mod:`.study`), one tuning run from settings (:mod:`.tune`) and the Tuner
stage (:mod:`.tuner`)."""
