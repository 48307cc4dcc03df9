"""The review page: items worth a look under a results root, labelled in the browser, exported as a labels
file for ``adray labels import`` (see :mod:`adray.review.page`)."""

from adray.review.page import PageConfig, ReviewPage, build_review, render_html, write_review
from adray.review.select import Picked, Selection, pick_items

__all__ = [
    "PageConfig",
    "Picked",
    "ReviewPage",
    "Selection",
    "build_review",
    "pick_items",
    "render_html",
    "write_review",
]
