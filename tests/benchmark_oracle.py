"""Reads the CPU benchmark's answers back from its images' pixels, to check labels independently of the generator's bookkeeping.

`expected_answers(record, folder)` works out what each answer of a record must be: blobs are
counted and classified, colours measured, digits looked up among scikit-learn's digits after the
documented transform, words matched against their rendering, sums added. Photos and jittered
near-duplicates of digits cannot be read back this way (None). Used by tests/test_benchmark.py.
"""
import functools, re
import numpy as np
from coincide.testbed.benchmark import BG, OPPOSITES, THINGS, blobs, colour_of, kind_of, sklearn_digits, two_caption, word_masks
from coincide.data import open_image

COLOUR_QUESTIONS = ('What colour is the shape?', 'Which colour is shown?', 'What colour is it?', 'What colour is the text?')


@functools.lru_cache(None)
def _digit_lookup() -> dict:
    "Grey 8 x 8 bytes (255 - 15 * value) of every scikit-learn digit -> its label."
    return {(255 - 15 * im).astype(np.uint8).tobytes(): int(y) for im, y in zip(*sklearn_digits())}


def read_digit(img:np.ndarray, # (8*scale, 8*scale, 3) uint8
               scale:int=4, # the pixel repeat of the transform
              ) -> int|None: # the label, or None if the image is not an untouched transformed digit
    "Which scikit-learn digit an image shows, by exact lookup after undoing the upscaling."
    small = img[::scale, ::scale, 0]                                     # (8, 8)
    if not np.array_equal(np.repeat(np.repeat(small, scale, 0), scale, 1)[..., None].repeat(3, 2), img): return None
    return _digit_lookup().get(small.tobytes())


def read_word(img:np.ndarray, # (SIZE, SIZE, 3) uint8
             ) -> str|None: # a word of WORDS, or None
    "Which word of `WORDS` is written in the image (exact match of its ink), or None."
    fg = np.abs(img.astype(np.int16) - BG).max(-1) > 30
    if not fg.any(): return None
    ys, xs = np.nonzero(fg); ink = fg[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    return next((w for w, m in word_masks().items() if m.shape == ink.shape and np.array_equal(m, ink)), None)


def _expect_text(q:str) -> str|None:
    "The answer of a text-only instruction, worked out from the question."
    if m := re.fullmatch(r'What is (\d+) plus (\d+)\?', q): return str(int(m[1]) + int(m[2]))
    if m := re.fullmatch(r'What number comes after (\d+)\?', q): return str(int(m[1]) + 1)
    if m := re.fullmatch(r'How many letters are in the word (\w+)\?', q): return str(len(m[1]))
    if m := re.fullmatch(r'What is the opposite of (\w+)\?', q): return {**OPPOSITES, **{v: k for k, v in OPPOSITES.items()}}[m[1]]
    if m := re.fullmatch(r'What colour is (.+)\?', q): return THINGS.get(m[1])
    return None


def _expect_digit(img, q, skill):
    "The answer of a digit question, from the digit(s) in the image."
    y = read_digit(img)
    if y is None: return None
    if skill == 'arithmetic': return str(y + int(re.search(r'(?:plus|Add) (\d)', q)[1]))
    if skill == 'verification': return 'yes' if re.search(r'digit (\d)\?', q)[1] == str(y) else 'no'
    if skill == 'multiple_choice': return str(y) if str(y) in re.search(r'Options: ([\w, ]+)\.', q)[1].split(', ') else None
    return f'digit {y}' if skill == 'caption' else str(y)


def _expect_word(img, q, skill):
    "The answer of a question about a written word."
    w = read_word(img)
    if w is None: return None
    if skill == 'verification': return 'yes' if re.search(r'say (\w+)\?', q)[1] == w else 'no'
    return f'word {w}' if skill == 'caption' else w


def _expect_shapes(img, q, skill, concept):
    "The answer of a question about drawn shapes, from the blobs in the image."
    bs = blobs(img); kinds = [kind_of(b) for b in bs]
    if q in COLOUR_QUESTIONS: return colour_of(img, np.any(bs, 0))
    if skill == 'counting': return str(kinds.count(concept))
    if skill == 'verification': return 'yes' if re.search(r'a (\w+) shape', q)[1] in {colour_of(img, b) for b in bs} else 'no'
    if skill == 'spatial':
        named = {colour_of(img, b): b for b in bs}
        a, b = re.search(r'the (\w+) shape relative to the (\w+) shape\?', q).groups()
        (ya, xa), (yb, xb) = (np.argwhere(named[c]).mean(0) for c in (a, b))
        return ('left' if xa < xb else 'right') if abs(xa - xb) > abs(ya - yb) else ('above' if ya < yb else 'below')
    if skill == 'caption' and concept == 'colour': return two_caption(img)
    if len(bs) > 1: return f'{len(bs)} {kinds[0]}s' if skill == 'caption' and len(set(kinds)) == 1 else None
    if q.startswith('What shape') or q.startswith('Which shape') or q.startswith('Name the shape'): return kinds[0]
    return f'{colour_of(img, bs[0])} {kinds[0]}' if skill in ('description', 'caption') else None


def expected_answers(rec:dict, # a benchmark record
                     images_dir, # the benchmark folder its image path is relative to
                    ) -> list: # one expected answer per turn; None where it cannot be read back
    "What each answer of a record must be, read back from the image's pixels (or a text-only question's text)."
    im = open_image(rec, images_dir)
    img = None if im is None else np.asarray(im)                        # (SIZE, SIZE, 3) uint8
    qs = [t['value'].replace('<image>\n', '') for t in rec['conversations'] if t['from'] == 'human']
    skills = rec.get('turn_skills') or [rec['skill']] * len(qs)
    def one(q, skill):
        if img is None: return _expect_text(q)
        if rec['concept'] == 'photo': return None
        if q == 'What colour is the text?': return colour_of(img, np.abs(img.astype(np.int16) - BG).max(-1) > 30)
        if rec['concept'] == 'digit': return _expect_digit(img, q, skill)
        if rec['concept'] == 'word': return _expect_word(img, q, skill)
        return _expect_shapes(img, q, skill, rec['concept'])
    return [one(q, s) for q, s in zip(qs, skills)]
