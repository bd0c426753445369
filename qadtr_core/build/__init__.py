"""Building the study: the job graph (:mod:`~qadtr_core.build.jobs`), the command line
(:mod:`~qadtr_core.build.cli`), the artifact and models bundles (:mod:`~qadtr_core.build.bundle`,
:mod:`~qadtr_core.build.models_bundle`), the book's configuration and provenance
(:mod:`~qadtr_core.build.bookconfig`, torch-free), cost estimates, seed aggregation and the studies the
defense chapters run (:mod:`~qadtr_core.build.studies`).

Nothing is imported here, so that the book build imports :mod:`~qadtr_core.build.bookconfig` without torch.
"""
