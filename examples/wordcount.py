"""Word count: the README's example pipeline.

Run one instance:   keyshift worker examples.wordcount:app
Run two:            keyshift run examples.wordcount:app --instances 2

Topic and app names can be changed with WORDCOUNT_APP / WORDCOUNT_SOURCE /
WORDCOUNT_SINK (the demo uses fresh names on every run).
"""

import os

from keyshift import App

app = App(os.environ.get("WORDCOUNT_APP", "wordcount"))

(
    app.stream(os.environ.get("WORDCOUNT_SOURCE", "sentences"))
    .flat_map(lambda sentence: sentence.split())
    .key_by(lambda word: word)
    .count(store="counts")
    .to(os.environ.get("WORDCOUNT_SINK", "word-counts"))
)
