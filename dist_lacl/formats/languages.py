"""Language codes: which strings are codes, and the one normal form every reader stores.

The normal form is lower case with `-` before a region or script (`pt-br`, `zh-hans`), and the ISO 639-1
code where the language has one: `deu`, `ger` and `de` are all stored as `de`. Why 2 letters: BCP 47
(RFC 5646, 2.2.1) requires the shortest ISO 639 code, the evaluation sets name their languages so
(MIRACL's `-de-`, Mr.TyDi's and mMARCO's words map to `de`), and the trainer keys the language loss,
the sampler and the diagnostics on this string, so `deu` data and `de` data must be one language.
A 3-letter code without a 639-1 twin (`fil`, `yue`, or `cmn`, one language of the `zh` macrolanguage,
which ISO gives no 2-letter code of its own) is kept as it is.
"""

from __future__ import annotations

import re

# ISO 639-2/T (= ISO 639-3) -> ISO 639-1, for every language that has a 639-1 code (ISO 639-2's table).
_TWIN = dict(pair.split(":") for pair in """
aar:aa abk:ab afr:af aka:ak amh:am ara:ar arg:an asm:as ava:av ave:ae aym:ay aze:az bak:ba bam:bm bel:be
ben:bn bih:bh bis:bi bod:bo bos:bs bre:br bul:bg cat:ca ces:cs cha:ch che:ce chu:cu chv:cv cor:kw cos:co
cre:cr cym:cy dan:da deu:de div:dv dzo:dz ell:el eng:en epo:eo est:et eus:eu ewe:ee fao:fo fas:fa fij:fj
fin:fi fra:fr fry:fy ful:ff gla:gd gle:ga glg:gl glv:gv grn:gn guj:gu hat:ht hau:ha heb:he her:hz hin:hi
hmo:ho hrv:hr hun:hu hye:hy ibo:ig ido:io iii:ii iku:iu ile:ie ina:ia ind:id ipk:ik isl:is ita:it jav:jv
jpn:ja kal:kl kan:kn kas:ks kat:ka kau:kr kaz:kk khm:km kik:ki kin:rw kir:ky kom:kv kon:kg kor:ko kua:kj
kur:ku lao:lo lat:la lav:lv lim:li lin:ln lit:lt ltz:lb lub:lu lug:lg mah:mh mal:ml mar:mr mkd:mk mlg:mg
mlt:mt mon:mn mri:mi msa:ms mya:my nau:na nav:nv nbl:nr nde:nd ndo:ng nep:ne nld:nl nno:nn nob:nb nor:no
nya:ny oci:oc oji:oj ori:or orm:om oss:os pan:pa pli:pi pol:pl por:pt pus:ps que:qu roh:rm ron:ro run:rn
rus:ru sag:sg san:sa sin:si slk:sk slv:sl sme:se smo:sm sna:sn snd:sd som:so sot:st spa:es sqi:sq srd:sc
srp:sr ssw:ss sun:su swa:sw swe:sv tah:ty tam:ta tat:tt tel:te tgk:tg tgl:tl tha:th tir:ti ton:to tsn:tn
tso:ts tuk:tk tur:tr twi:tw uig:ug ukr:uk urd:ur uzb:uz ven:ve vie:vi vol:vo wln:wa wol:wo xho:xh yid:yi
yor:yo zha:za zho:zh zul:zu
tib:bo cze:cs wel:cy ger:de gre:el baq:eu per:fa fre:fr arm:hy ice:is geo:ka mac:mk mao:mi may:ms bur:my
dut:nl rum:ro slo:sk alb:sq chi:zh
""".split())
"""The last two lines: ISO 639-2/B (bibliographic) codes, which older corpora use (`ger`, `fre`, `chi`)."""

ISO639_1 = frozenset(_TWIN.values())
_LANG = re.compile(r"^([a-z]{2,3})([-_][a-z0-9]{2,8})*(@[a-z]+)?$", re.IGNORECASE)


def is_language_code(code: str) -> bool:
    """An ISO 639-1 code, or any 3-letter ISO 639-2/3 code, with an optional region or script
    (`pt-br`, `zh_CN`, `sr@latin`)."""
    m = _LANG.match(code)
    return bool(m) and (len(m.group(1)) == 3 or m.group(1).lower() in ISO639_1)


def normal_lang(code: str) -> str:
    """The stored form of a language code (module docstring): `DEU_ch` -> 'de-ch', `ger` -> 'de'."""
    code = code.lower().replace("_", "-")
    primary = re.match(r"[a-z]+", code)
    if primary and primary.group() in _TWIN:
        return _TWIN[primary.group()] + code[primary.end():]
    return code
