"""Signals the personas app sends for the apps above it (which it never imports).

``persona_saved``: sent by the persona admin once a persona, its gallery and its
ControlNet units are saved, with ``persona=``. A receiver returns a list of
warnings (text) to show on the page: the generation app's plan check says there
what would make the persona's next generation fail.
"""

from django.dispatch import Signal

persona_saved = Signal()
