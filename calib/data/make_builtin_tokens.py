"""Pre-tokenizes builtin_calibration.txt with the tok512 SentencePiece model that stories260K,
nemotron-h-tiny and `mixq synth` checkpoints share, by llama2.c's rule ([BOS] + pieces per document,
documents separated by <|endoftext|>), into builtin_calibration.tok512.u16.bin. mixq uses these ids
for models that ship no tokenizer.model; models that do get the text encoded with their own.

Usage: python calib/data/make_builtin_tokens.py ../shared/models/stories260K/tokenizer.model
"""
import array
import pathlib
import sys

import sentencepiece

here = pathlib.Path(__file__).parent
sp = sentencepiece.SentencePieceProcessor(model_file=sys.argv[1])
assert sp.vocab_size() == 512, sp.vocab_size()
ids = array.array("H")
for doc in (here / "builtin_calibration.txt").read_text().split("<|endoftext|>"):
    doc = doc.strip()
    if doc:
        ids.append(sp.bos_id())
        ids.extend(sp.encode(doc))
if sys.byteorder != "little":
    ids.byteswap()
(here / "builtin_calibration.tok512.u16.bin").write_bytes(ids.tobytes())
print(len(ids), "tokens")
