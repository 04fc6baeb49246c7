"""Local evaluation: prediction over image files (:mod:`.predict`), scoring an archive and
writing the report (:mod:`.evaluate`) and the Evaluator stage (:mod:`.evaluator`)."""
