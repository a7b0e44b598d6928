"""jieba precise-mode segmentation (`jieba.cut(text, cut_all=False, HMM=True)`), exactly, faster.

`FastJieba.cut(text)` returns the same list of words as `list(jieba.cut(text))` (tests and
`bench/tokenizer_speed.py` check it on real text). It uses jieba's own dictionary and HMM and
differs only in how the work is done:

- the DAG scan and the max-probability route are one backward loop over precomputed
  log-frequencies (the same float operations in the same order, same tie-break: the
  longer word wins on equal scores), instead of a DAG dict plus a generator per position;
- the words of every Han block (jieba cuts each run of `re_han_default` independently) and
  every HMM-recognised buffer are cached, so a repeated clause costs one dict lookup.

The dictionary is snapshot when the segmenter is built: words added to jieba later
(`jieba.add_word`) are not seen.
"""
from __future__ import annotations

import math

import jieba
import jieba.finalseg

_PREFIX = 1.0  # table value of a dictionary prefix that is not a word itself
_CACHE_LIMIT = 200_000  # cached Han blocks before the cache is cleared (bounds memory)


class FastJieba:
    """Exact, faster replacement for `jieba.cut(text)` (precise mode with HMM)."""

    def __init__(self, translate: dict[int, str] | None = None) -> None:
        """`translate`: a `str.translate` table applied to whitespace words (cached with them)."""
        jieba.setLogLevel(60)
        self._translate = translate or {}
        jieba.dt.check_initialized()
        self._freq: dict[str, int] = jieba.dt.FREQ
        logtotal = math.log(jieba.dt.total)
        # same float as jieba's `log(FREQ.get(w) or 1) - logtotal`
        self._table = {w: (math.log(f) - logtotal if f else _PREFIX) for w, f in self._freq.items()}
        self._unk = math.log(1) - logtotal
        self._re_han = jieba.re_han_default
        self._re_skip = jieba.re_skip_default
        self._blocks: dict[str, list[str]] = {}
        self._hmm: dict[str, list[str]] = {}

    def cut(self, text: str) -> list[str]:
        """Words of `text` in order; ''.join(result) == text (before `translate`)."""
        out: list[str] = []
        blocks_cache = self._blocks
        for blk in self._re_han.split(text):
            if not blk:
                continue
            words = blocks_cache.get(blk)
            if words is None:
                if self._re_han.match(blk):
                    words = self._cut_block(blk)
                else:
                    words = []
                    for x in self._re_skip.split(blk):
                        if self._re_skip.match(x):
                            words.append(x.translate(self._translate))
                        else:
                            words.extend(x)
                if len(blocks_cache) >= _CACHE_LIMIT:
                    blocks_cache.clear()
                blocks_cache[blk] = words
            out.extend(words)
        return out

    def _route(self, s: str) -> list[int]:
        """end[i] = last index of the best word starting at i (jieba's get_DAG + calc)."""
        n = len(s)
        get, unk = self._table.get, self._unk
        score = [0.0] * (n + 1)
        end = [0] * n
        for k in range(n - 1, -1, -1):
            best, best_x = -math.inf, -1
            i = k
            v = get(s[k])
            while v is not None:  # s[k:i+1] is a dictionary word or a prefix of one
                if v <= 0.0:  # a word (log-probabilities are < 0; prefixes only hold _PREFIX)
                    cand = v + score[i + 1]
                    if cand >= best:  # tuple max: equal scores go to the larger end index
                        best, best_x = cand, i
                i += 1
                if i >= n:
                    break
                v = get(s[k:i + 1])
            if best_x < 0:
                best, best_x = unk + score[k + 1], k
            score[k], end[k] = best, best_x
        return end

    def _flush(self, buf: str, out: list[str]) -> None:
        """jieba's handling of a run of single characters: HMM unless it is a known word."""
        if len(buf) == 1:
            out.append(buf)
        elif not self._freq.get(buf):
            words = self._hmm.get(buf)
            if words is None:
                words = hmm_cut(buf)
                if len(self._hmm) >= _CACHE_LIMIT:
                    self._hmm.clear()
                self._hmm[buf] = words
            out.extend(words)
        else:
            out.extend(buf)

    def _cut_block(self, s: str) -> list[str]:
        end = self._route(s)
        out: list[str] = []
        x, n, buf = 0, len(s), ""
        while x < n:
            y = end[x] + 1
            if y - x == 1:
                buf += s[x]
            else:
                if buf:
                    self._flush(buf, out)
                    buf = ""
                out.append(s[x:y])
            x = y
        if buf:
            self._flush(buf, out)
        return out


# ------------------------------------------------------------------ jieba.finalseg, exactly
_MIN_FLOAT = jieba.finalseg.MIN_FLOAT
_START, _TRANS, _EMIT = jieba.finalseg.start_P, jieba.finalseg.trans_P, jieba.finalseg.emit_P
_FS_HAN, _FS_SKIP = jieba.finalseg.re_han, jieba.finalseg.re_skip


def _viterbi(obs: str) -> str:
    """jieba.finalseg.viterbi's best state string (same sums, same tie-breaks), with back-pointers."""
    eb, em, es, ee = _EMIT["B"].get, _EMIT["M"].get, _EMIT["S"].get, _EMIT["E"].get
    t_eb, t_sb = _TRANS["E"]["B"], _TRANS["S"]["B"]
    t_mm, t_bm = _TRANS["M"]["M"], _TRANS["B"]["M"]
    t_ss, t_es = _TRANS["S"]["S"], _TRANS["E"]["S"]
    t_be, t_me = _TRANS["B"]["E"], _TRANS["M"]["E"]
    c = obs[0]
    b = _START["B"] + eb(c, _MIN_FLOAT)
    m = _START["M"] + em(c, _MIN_FLOAT)
    s = _START["S"] + es(c, _MIN_FLOAT)
    e = _START["E"] + ee(c, _MIN_FLOAT)
    back = []  # per step: the previous state chosen for B, M, S, E
    for c in obs[1:]:
        # max over (prob, state) tuples: on equal prob the larger state letter wins
        pb1, pb2 = e + t_eb, s + t_sb  # B from E or S
        nb, bb = (pb2, "S") if pb2 >= pb1 else (pb1, "E")
        pm1, pm2 = m + t_mm, b + t_bm  # M from M or B
        nm, bm = (pm1, "M") if pm1 >= pm2 else (pm2, "B")
        ps1, ps2 = s + t_ss, e + t_es  # S from S or E
        ns, bs = (ps1, "S") if ps1 >= ps2 else (ps2, "E")
        pe1, pe2 = b + t_be, m + t_me  # E from B or M
        ne, be = (pe2, "M") if pe2 >= pe1 else (pe1, "B")
        b, m, s, e = nb + eb(c, _MIN_FLOAT), nm + em(c, _MIN_FLOAT), ns + es(c, _MIN_FLOAT), ne + ee(c, _MIN_FLOAT)
        back.append({"B": bb, "M": bm, "S": bs, "E": be})
    state = "S" if s >= e else "E"  # max((V[E], 'E'), (V[S], 'S'))
    states = [state]
    for ptr in reversed(back):
        state = ptr[state]
        states.append(state)
    return "".join(reversed(states))


def _hmm_block(sentence: str) -> list[str]:
    """jieba.finalseg.__cut: words from the best B/M/E/S tagging."""
    tags = _viterbi(sentence)
    out, begin, nexti = [], 0, 0
    for i, tag in enumerate(tags):
        if tag == "B":
            begin = i
        elif tag == "E":
            out.append(sentence[begin:i + 1])
            nexti = i + 1
        elif tag == "S":
            out.append(sentence[i])
            nexti = i + 1
    if nexti < len(sentence):
        out.append(sentence[nexti:])
    return out


def hmm_cut(text: str) -> list[str]:
    """`list(jieba.finalseg.cut(text))`, exactly (falls back to jieba with forced splits)."""
    if jieba.finalseg.Force_Split_Words:
        return list(jieba.finalseg.cut(text))
    out: list[str] = []
    for blk in _FS_HAN.split(text):
        if _FS_HAN.match(blk):
            out.extend(_hmm_block(blk))
        else:
            out.extend(x for x in _FS_SKIP.split(blk) if x)
    return out
