"""Evaluation metrics: VQA accuracy, exact match, ANLS, CIDEr-D and BLEU in pure Python; box IoU, and detection
mAP by pycocotools' COCO evaluation.

VQA follows the official VQA API (``vqaEval.py``); CIDEr-D and BLEU follow pycocoevalcap's ``Cider``
and ``Bleu`` scorers, with a Java-free approximation of its PTB tokenizer (see :func:`ptb_tokenize`).

Deliberate deviations from the official code:

* ``vqa_accuracy`` with a single reference is normalised exact match (the official leave-one-out
  formula would always give 0 there).
* The official ``periodStrip.sub(..., re.UNICODE)`` passes ``re.UNICODE`` (32) as the *count*, so it
  strips at most 32 periods; we strip all of them.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence

# ---------------------------------------------------------------------------------------------------
# VQA answer normalisation (tables copied verbatim from vqaEval.py, including its unreachable
# capitalised contraction keys and its odd "somebody'd" entry).
# ---------------------------------------------------------------------------------------------------
_CONTRACTIONS = dict(
    re.findall(
        r"([^\s:]+):(\S+)",
        """
    aint:ain't arent:aren't cant:can't couldve:could've couldnt:couldn't couldn'tve:couldn't've
    couldnt've:couldn't've didnt:didn't doesnt:doesn't dont:don't hadnt:hadn't hadnt've:hadn't've
    hadn'tve:hadn't've hasnt:hasn't havent:haven't hed:he'd hed've:he'd've he'dve:he'd've hes:he's
    howd:how'd howll:how'll hows:how's Id've:I'd've I'dve:I'd've Im:I'm Ive:I've isnt:isn't itd:it'd
    itd've:it'd've it'dve:it'd've itll:it'll let's:let's maam:ma'am mightnt:mightn't
    mightnt've:mightn't've mightn'tve:mightn't've mightve:might've mustnt:mustn't mustve:must've
    neednt:needn't notve:not've oclock:o'clock oughtnt:oughtn't ow's'at:'ow's'at 'ows'at:'ow's'at
    'ow'sat:'ow's'at shant:shan't shed've:she'd've she'dve:she'd've she's:she's shouldve:should've
    shouldnt:shouldn't shouldnt've:shouldn't've shouldn'tve:shouldn't've somebody'd:somebodyd
    somebodyd've:somebody'd've somebody'dve:somebody'd've somebodyll:somebody'll somebodys:somebody's
    someoned:someone'd someoned've:someone'd've someone'dve:someone'd've someonell:someone'll
    someones:someone's somethingd:something'd somethingd've:something'd've
    something'dve:something'd've somethingll:something'll thats:that's thered:there'd
    thered've:there'd've there'dve:there'd've therere:there're theres:there's theyd:they'd
    theyd've:they'd've they'dve:they'd've theyll:they'll theyre:they're theyve:they've twas:'twas
    wasnt:wasn't wed've:we'd've we'dve:we'd've weve:we've werent:weren't whatll:what'll
    whatre:what're whats:what's whatve:what've whens:when's whered:where'd wheres:where's
    whereve:where've whod:who'd whod've:who'd've who'dve:who'd've wholl:who'll whos:who's
    whove:who've whyll:why'll whyre:why're whys:why's wont:won't wouldve:would've wouldnt:wouldn't
    wouldnt've:wouldn't've wouldn'tve:wouldn't've yall:y'all yall'll:y'all'll y'allll:y'all'll
    yall'd've:y'all'd've y'alld've:y'all'd've y'all'dve:y'all'd've youd:you'd youd've:you'd've
    you'dve:you'd've youll:you'll youre:you're youve:you've
    """,
    )
)
_MANUAL_MAP = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5"}
_MANUAL_MAP |= {"six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_PUNCT = list(r';/[]"{}()=+\_-><@`,?!')  # single characters, in the official order
# "(?!<=\d)" is the official typo for a look-behind: in effect, drop every "." not followed by a digit.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def _process_punctuation(text: str) -> str:
    """``processPunctuation``: delete or space out ``_PUNCT`` characters, then strip periods."""
    out = text
    digit_comma = _COMMA_STRIP.search(text) is not None
    for p in _PUNCT:
        spaced = p + " " in text or " " + p in text
        out = out.replace(p, "" if spaced or digit_comma else " ")
    return _PERIOD_STRIP.sub("", out)


def _process_digit_article(text: str) -> str:
    """``processDigitArticle``: lowercase, number words to digits, drop articles, fix contractions."""
    words = [_MANUAL_MAP.get(w, w) for w in text.lower().split()]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def normalize_answer(text: str) -> str:
    """The official normalisation of a predicted answer (whitespace, punctuation, digits, articles)."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _process_digit_article(_process_punctuation(text))


def exact_match(prediction: str, reference: str) -> float:
    """1.0 if both strings are equal after :func:`normalize_answer`, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Official VQA accuracy of one prediction against its N reference answers, in [0, 1].

    For each reference i: ``min(#(other references equal to the prediction) / 3, 1)``; the mean over i.
    As in vqaEval.py, the prediction is fully normalised but the references only go through
    ``processPunctuation``, and only when they are not all identical (VQAv2 answers are stored
    normalised). With N = 1 this is :func:`exact_match` (both sides fully normalised).
    """
    if not answers:
        raise ValueError("vqa_accuracy needs at least one reference answer")
    if len(answers) == 1:
        return exact_match(prediction, answers[0])
    pred = normalize_answer(prediction)
    if len(set(answers)) > 1:
        answers = [_process_punctuation(a) for a in answers]
    hits = [a == pred for a in answers]
    total = sum(hits)
    return sum(min((total - hit) / 3, 1.0) for hit in hits) / len(hits)


# ---------------------------------------------------------------------------------------------------
# PTB tokenisation, approximating pycocoevalcap's PTBTokenizer (Stanford CoreNLP 3.4.1 run with
# -preserveLines -lowerCase, then dropping the tokens in PUNCTUATIONS).
# ---------------------------------------------------------------------------------------------------
PUNCTUATIONS = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":"}
PUNCTUATIONS |= {"-", "--", "...", ";"}
# Brackets become -lrb- etc.; after -lowerCase they no longer match the upper-case PUNCTUATIONS
# entries, so pycocoevalcap keeps them as tokens, and so do we.
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_SPLIT_WORDS = {"cannot": "can not", "gonna": "gon na", "gotta": "got ta", "wanna": "wan na"}
_SPLIT_WORDS |= {"lemme": "lem me", "gimme": "gim me"}
_ABBREVIATIONS = {"mr.", "mrs.", "ms.", "dr.", "st.", "jr.", "sr.", "vs.", "etc."}
_ABBREVIATIONS |= {"mt.", "ave.", "inc.", "co."}
_CLITICS = {"'s", "'re", "'ve", "'ll", "'d", "'m", "n't"}
_CLITIC = re.compile(r"^(.+?)(n't|'s|'re|'ve|'ll|'d|'m)$")
_SYMBOLS = re.compile(r"[?!]+|[;*+=<>~^|$%`]|--+|\.\.+|(?<!\d)[,:]|[,:](?!\d)")
_QUOTES = str.maketrans({"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'"})


def _is_abbreviation(word: str) -> bool:
    return word in _ABBREVIATIONS or re.fullmatch(r"([a-z]\.){2,}", word) is not None


def _split_word(word: str) -> list[str]:
    """Split one whitespace-free, symbol-free chunk into PTB tokens (quotes, final period, clitics)."""
    if word in _CLITICS or word in _BRACKETS.values() or re.fullmatch(r"[.'-]+", word):
        return [word]
    head, tail = [], []
    while word[:1] == "'":
        head.append(word[0])
        word = word[1:]
    while word[-1:] in ("'", "-") or (word.endswith(".") and not _is_abbreviation(word)):
        tail.insert(0, word[-1])
        word = word[:-1]
    if word in _SPLIT_WORDS:
        return head + _SPLIT_WORDS[word].split() + tail
    match = _CLITIC.match(word)
    if match:
        return head + list(match.groups()) + tail
    return head + ([word] if word else []) + tail


def ptb_tokenize(text: str) -> list[str]:
    """Lower-case PTB tokens of a caption, punctuation dropped, as pycocoevalcap would produce them.

    Approximated (ordinary captions only): quotes, brackets, the symbols ``;!?*+=<>~^|$%``, commas and
    colons (not inside numbers), ``--`` and ellipses are split off; a final "." is split off unless the
    word is an initialism ("u.s.", "a.m.") or a common abbreviation ("mr.", "st."); clitics ("'s",
    "n't", "'re", ...) and "cannot", "gonna"-style words are split. Not handled: emoticons, URLs,
    "y'all", "'90s", "w/", "4:30pm"-style glued units, single-letter initials ("e."), PTB's full
    abbreviation list. As in pycocoevalcap, brackets survive as "-lrb-" etc. and "?!" as one token.
    """
    text = text.lower().translate(_QUOTES).replace('"', " '' ")
    text = re.sub(r"[()\[\]{}]", lambda m: f" {_BRACKETS[m.group()]} ", text)
    text = _SYMBOLS.sub(lambda m: f" {m.group()} ", text)
    tokens = [tok for chunk in text.split() for tok in _split_word(chunk)]
    return [tok for tok in tokens if tok not in PUNCTUATIONS and not re.fullmatch(r"\.{2,}|-{2,}", tok)]


# ---------------------------------------------------------------------------------------------------
# Caption metrics (coco-caption).
# ---------------------------------------------------------------------------------------------------
def _ngrams(tokens: list[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i : i + k]) for k in range(1, n + 1) for i in range(len(tokens) - k + 1))


def _tokenized(
    predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]]
) -> list[tuple[list[str], list[list[str]]]]:
    """(hypothesis tokens, reference tokens) per image, in the order of ``references``."""
    if predictions.keys() != references.keys() or not references:
        raise ValueError("predictions and references need the same, non-empty set of ids")
    if any(len(refs) == 0 for refs in references.values()):
        raise ValueError("every id needs at least one reference")
    return [(ptb_tokenize(predictions[k]), [ptb_tokenize(r) for r in refs]) for k, refs in references.items()]


def cider_d_scores(
    predictions: Mapping[Hashable, str],
    references: Mapping[Hashable, Sequence[str]],
    n: int = 4,
    sigma: float = 6.0,
) -> tuple[float, list[float]]:
    """CIDEr-D as pycocoevalcap's ``Cider``: (mean, per-image scores in the order of ``references``).

    Document frequencies come from the references of this set only, so the score depends on the set.
    """
    data = [
        (_ngrams(hyp, n), len(hyp), [(_ngrams(r, n), len(r)) for r in refs])
        for hyp, refs in _tokenized(predictions, references)
    ]
    doc_freq = Counter(g for _, _, refs in data for g in set().union(*(counts for counts, _ in refs)))
    log_num_images = math.log(len(data))

    def tfidf(counts: Counter) -> tuple[list[dict], list[float]]:
        vec: list[dict] = [{} for _ in range(n)]
        for gram, tf in counts.items():
            vec[len(gram) - 1][gram] = tf * (log_num_images - math.log(max(1.0, doc_freq[gram])))
        return vec, [math.sqrt(sum(w * w for w in v.values())) for v in vec]

    scores = []
    for hyp_counts, hyp_len, refs in data:
        hyp_vec, hyp_norm = tfidf(hyp_counts)
        total = 0.0
        for ref_counts, ref_len in refs:
            ref_vec, ref_norm = tfidf(ref_counts)
            # pycocoevalcap's "length" is the bigram count (its `n == 1` test is on a 0-based index).
            delta = max(hyp_len - 1, 0) - max(ref_len - 1, 0)
            penalty = math.exp(-(delta**2) / (2 * sigma**2))
            for k in range(n):
                val = sum(
                    min(w, ref_vec[k].get(g, 0.0)) * ref_vec[k].get(g, 0.0) for g, w in hyp_vec[k].items()
                )
                if hyp_norm[k] != 0 and ref_norm[k] != 0:
                    val /= hyp_norm[k] * ref_norm[k]
                total += val * penalty
        scores.append(total / n / len(refs) * 10.0)
    return sum(scores) / len(scores), scores


def cider_d(predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]]) -> float:
    """Corpus CIDEr-D (mean over images), as pycocoevalcap's ``Cider().compute_score``; COCO reports x100."""
    return cider_d_scores(predictions, references)[0]


def bleu(
    predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]], n: int = 4
) -> float:
    """Corpus BLEU-n as coco-caption's ``Bleu`` scorer: clipped counts, "closest" reference length."""
    tiny, small = 1e-15, 1e-9  # coco-caption's smoothing constants
    correct, guess = [0] * n, [0] * n
    hyp_total = ref_total = 0
    for hyp, refs in _tokenized(predictions, references):
        max_ref = Counter()
        for ref in refs:
            max_ref |= _ngrams(ref, n)  # Counter union keeps the max count per n-gram
        for gram, count in _ngrams(hyp, n).items():
            correct[len(gram) - 1] += min(count, max_ref[gram])
        for k in range(n):
            guess[k] += max(0, len(hyp) - k)
        hyp_total += len(hyp)
        ref_total += min((abs(len(r) - len(hyp)), len(r)) for r in refs)[1]
    score = math.prod((correct[k] + tiny) / (guess[k] + small) for k in range(n)) ** (1 / n)
    ratio = (hyp_total + tiny) / (ref_total + small)
    return score * math.exp(1 - 1 / ratio) if ratio < 1 else score


# ---------------------------------------------------------------------------------------------------
# Document QA and detection.
# ---------------------------------------------------------------------------------------------------
def _levenshtein(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def anls(prediction: str, answers: Sequence[str], threshold: float = 0.5) -> float:
    """Average Normalized Levenshtein Similarity of one answer (DocVQA): the best over the references of
    1 - distance / max length, 0 where that distance is ``threshold`` or more; case and spacing ignored."""
    pred = " ".join(prediction.lower().split())
    best = 0.0
    for answer in answers:
        ref = " ".join(answer.lower().split())
        distance = _levenshtein(pred, ref) / max(len(pred), len(ref), 1)
        best = max(best, 1.0 - distance if distance < threshold else 0.0)
    return best


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two boxes (y_min, x_min, y_max, x_max, ...)."""
    height = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    width = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    inter = height * width
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def detection_map(predictions: Sequence[Sequence], targets: Sequence[Sequence]) -> dict[str, float]:
    """COCO box mAP of per-image predicted boxes against target boxes, each a (y_min, x_min, y_max, x_max, name)
    tuple (``paligemma.data.boxes.Box``), by pycocotools' COCOeval.

    Returns {"map": mAP over IoU 0.50:0.95, "map_50", "map_75"} (-1 without any target box). Generated boxes
    carry no confidence: each scores 1, and COCOeval's stable sort ranks ties in image order, then box order.
    Classes come from the targets, as COCO's category ids come from the ground truth: a predicted name no target
    has is not evaluated.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} targets")
    names = sorted({b[4] for boxes in targets for b in boxes})
    category = {name: i + 1 for i, name in enumerate(names)}

    def annotations(per_image: Sequence[Sequence], scored: bool) -> list[dict]:
        out = []
        for image_id, boxes in enumerate(per_image):
            for b in boxes:
                if b[4] in category:
                    xywh = [b[1], b[0], b[3] - b[1], b[2] - b[0]]
                    out.append({"id": len(out) + 1, "image_id": image_id, "category_id": category[b[4]],
                                "bbox": xywh, "area": xywh[2] * xywh[3], "iscrowd": 0})  # fmt: skip
                    out[-1] |= {"score": 1.0} if scored else {}
        return out

    if not names:
        return {"map": -1.0, "map_50": -1.0, "map_75": -1.0}
    truth = COCO()
    # types-pycocotools' TypedDicts require fields (segmentation, width, ...) that box evaluation never reads
    truth.dataset = {
        "images": [{"id": i} for i in range(len(targets))],
        "annotations": annotations(targets, scored=False),  # pyright: ignore[reportAttributeAccessIssue] -- see above
        "categories": [{"id": i, "name": name} for name, i in category.items()],
    }
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and the summary
        truth.createIndex()
        found = annotations(predictions, scored=True)
        evaluation = COCOeval(truth, truth.loadRes(found) if found else COCO(), "bbox")  # pyright: ignore[reportArgumentType] -- loadRes takes a list of results too, not only a file
        evaluation.params.imgIds = list(range(len(targets)))
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return {
        name: float(value)
        for name, value in zip(("map", "map_50", "map_75"), evaluation.stats[:3], strict=True)
    }
