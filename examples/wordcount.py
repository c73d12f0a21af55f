"""Word count: the README's example pipeline.

Run one instance:   keyshift worker examples.wordcount:app
Run two:            keyshift run examples.wordcount:app --instances 2
"""

from keyshift import App

app = App("wordcount")

(
    app.stream("sentences")
    .flat_map(lambda sentence: sentence.split())
    .key_by(lambda word: word)
    .count(store="counts")
    .to("word-counts")
)
