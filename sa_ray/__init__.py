"""sa_ray: SpeechAlign on Ray. The library: config, text, corpus, codecs, data, metrics, tracking.

It knows nothing of Ray actors or jobs; `actors/` wraps it in Ray roles and `jobs/` are entry points.
"""

__version__ = "0.1.0"
