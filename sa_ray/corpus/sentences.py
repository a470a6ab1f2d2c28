"""Sentences for the built-in corpus, from a small English grammar of the project's own.

Why a grammar and not a text dump: the corpus must be reproducible from a seed, free of licences,
short enough for a tiny TTS (4-12 words, mostly 5-9), plain ASCII, and made of common words a
speech recogniser knows, while still covering a wide vocabulary (over a thousand distinct words)
so that a model cannot get by on a few memorised templates.

The grammar: seventeen sentence shapes (statements in several tenses, questions, requests,
commands, exclamations, descriptions), each with several variants, filled from word lists in which
verbs only take the kinds of object they make sense with (you peel fruit and charge phones, never
the other way round), adjectives belong to the kind of noun they describe, and times agree with
the tense.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from itertools import combinations

MIN_WORDS, MAX_WORDS = 4, 12

# --------------------------------------------------------------------------------------------- #
# Morphology: regular English inflection; irregular forms are spelled out in the word lists.

_VOWELS = "aeiou"
_DOUBLING = {"begin", "forget", "admit", "prefer"}  # double the final consonant despite two syllables


def _plural(noun: str) -> str:
    if noun.endswith(("s", "x", "z", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in _VOWELS:
        return noun[:-1] + "ies"
    return noun + "s"


def _on_head(verb: str, inflect: Callable[[str], str]) -> str:
    """Inflects the first word of a phrasal verb: turn off -> turns off."""
    head, _, particle = verb.partition(" ")
    return inflect(head) + (f" {particle}" if particle else "")


def _third_person(verb: str) -> str:
    irregular = {"have": "has", "do": "does", "go": "goes"}
    return _on_head(verb, lambda v: irregular.get(v) or _plural(v))  # same spelling rules: fixes, carries


def _ing(verb: str) -> str:
    def one(v: str) -> str:
        if v.endswith("ie"):
            return v[:-2] + "ying"
        if v.endswith("e") and not v.endswith(("ee", "ye", "oe")):
            return v[:-1] + "ing"
        one_syllable = len(re.findall(f"[{_VOWELS}]+", v)) == 1
        cvc = len(v) >= 3 and v[-1] not in _VOWELS + "wxy" and v[-2] in _VOWELS and v[-3] not in _VOWELS
        return v + v[-1] + "ing" if cvc and (one_syllable or v in _DOUBLING) else v + "ing"

    return _on_head(verb, one)


def _a(phrase: str) -> str:
    """The indefinite article for a phrase: a cup, an apple, a useful tool, an hour."""
    first = phrase.split()[0]
    vowel_sound = first[0] in _VOWELS and not first.startswith(("uni", "use", "usu", "one", "eu"))
    return ("an " if vowel_sound or first in ("hour", "honest") else "a ") + phrase


def _words(spec: str) -> list[str]:
    return [w.replace("_", " ") for w in spec.split()]


@dataclass(frozen=True)
class Noun:
    sg: str
    pl: str | None  # None: a mass noun (some bread, the soup)


def _nouns(spec: str) -> list[Noun]:
    """'apple knife/knives' -> count nouns (regular plural unless given); 'bread*' -> a mass noun.

    Underscores join multi-word nouns (bus_stop)."""
    out = []
    for item in (w.replace("_", " ") for w in spec.split()):
        if item.endswith("*"):
            out.append(Noun(item[:-1], None))
        elif "/" in item:
            sg, pl = item.split("/")
            out.append(Noun(sg, pl))
        else:
            out.append(Noun(item, _plural(item)))
    return out


# --------------------------------------------------------------------------------------------- #
# Word lists. Nouns come in kinds, each with the adjectives that fit it.


@dataclass(frozen=True)
class Kind:
    nouns: list[Noun]
    adjectives: list[str]


KINDS: dict[str, Kind] = {
    "fruit": Kind(
        _nouns("apple banana orange pear peach lemon plum cherry grape melon mango pineapple strawberry coconut"),
        _words("fresh ripe green red yellow sweet juicy small large big round soft"),
    ),
    "veg": Kind(
        _nouns("tomato/tomatoes potato/potatoes carrot onion cucumber pumpkin cabbage pepper bean pea"),
        _words("fresh ripe green red small large big raw"),
    ),
    "baked": Kind(
        _nouns("cake pie cookie muffin pizza cupcake biscuit loaf/loaves bagel"),
        _words("fresh warm homemade sweet delicious small large chocolate lemon tiny huge"),
    ),
    "meal": Kind(
        _nouns("sandwich pancake waffle burger omelet taco"), _words("fresh warm hot cold big small delicious homemade")
    ),
    "dish": Kind(
        _nouns("soup* rice* pasta* chicken* stew* fish* meat* porridge* popcorn* noodles/noodles"),
        _words("fresh warm hot cold spicy delicious homemade leftover salty tasty"),
    ),
    "pantry": Kind(
        _nouns("bread* cheese* butter* honey* jam* chocolate* cereal* yogurt* sugar* flour*"),
        _words("fresh white brown sweet soft dark cheap expensive"),
    ),
    "drink": Kind(
        _nouns("tea* coffee* milk* juice* water* lemonade* soda* cocoa*"),
        _words("hot cold warm fresh sweet strong iced"),
    ),
    "kitchen": Kind(
        _nouns("knife/knives spoon fork plate tray dish cup mug bowl glass bottle jar pot kettle teapot pan"),
        _words("clean dirty empty old new heavy small large chipped blue white green red plastic metal wooden"),
    ),
    "vessel": Kind(
        _nouns("cup mug bowl glass bottle jar pot kettle teapot bucket jug"),
        _words("big small clean empty old new plastic metal blue white"),
    ),
    "clothes": Kind(
        _nouns("coat jacket sweater scarf/scarves shirt dress skirt tie raincoat uniform apron blouse vest"),
        _words(
            "old new warm wet dry clean dirty red blue green black white brown gray "
            "yellow woolen cotton long short thick"
        ),
    ),
    "gear": Kind(
        _nouns("hat glove shoe boot sock belt helmet slipper sandal cap"),
        _words("old new wet dry muddy red blue green black white brown leather"),
    ),
    "furniture": Kind(
        _nouns("chair table desk sofa bed shelf/shelves bench cabinet stool couch bookcase"),
        _words("old new wooden white broken small large heavy long narrow kitchen garden blue green comfortable"),
    ),
    "fixture": Kind(
        _nouns("door window gate drawer cupboard closet"),
        _words("old new wooden white front back kitchen garden bedroom heavy narrow"),
    ),
    "structure": Kind(
        _nouns("fence wall roof floor shed porch path"), _words("old new wooden stone white long low garden broken")
    ),
    "device": Kind(
        _nouns("radio computer printer heater fan toaster clock television lamp oven fridge stove"),
        _words("old new broken small expensive cheap noisy quiet silver black kitchen"),
    ),
    "gadget": Kind(
        _nouns("phone laptop camera tablet speaker flashlight"),
        _words("old new broken small expensive cheap silver black spare"),
    ),
    "motor": Kind(
        _nouns("car truck bus van tractor"),
        _words("old new red blue green white black yellow fast slow small big muddy dusty rusty shiny"),
    ),
    "cycle": Kind(
        _nouns("bike bicycle scooter motorbike"), _words("old new red blue green black fast small rusty shiny")
    ),
    "text": Kind(
        _nouns("letter story poem report note card postcard recipe list email message article speech"),
        _words("short long funny sad strange interesting boring secret kind angry"),
    ),
    "print": Kind(
        _nouns("book newspaper magazine map menu novel notebook diary comic guide"),
        _words("old new thick thin funny strange interesting boring famous"),
    ),
    "art": Kind(
        _nouns("picture painting photo poster drawing calendar sign"),
        _words("old new large small strange beautiful famous colorful funny"),
    ),
    "small": Kind(
        _nouns("key wallet ticket umbrella ring watch purse passport pencil pen coin bracelet necklace badge whistle"),
        _words("old new small lost spare silver gold golden plastic lucky tiny"),
    ),
    "toy": Kind(
        _nouns("doll puzzle toy balloon robot kite teddy_bear"),
        _words("new old red blue green yellow bright colorful broken little favorite"),
    ),
    "throwable": Kind(
        _nouns("ball stick stone frisbee snowball pebble"), _words("red blue small big round flat smooth tennis")
    ),
    "instrument": Kind(
        _nouns("guitar piano violin flute drum trumpet harp cello"), _words("old new small large beautiful borrowed")
    ),
    "flower": Kind(
        _nouns("flower rose tulip daisy sunflower lily"), _words("red yellow white pink purple wild fresh tall little")
    ),
    "plant": Kind(
        _nouns("tree bush seed vine hedge cactus/cacti herb plant"), _words("tall small young old dry green wild tiny")
    ),
    "pet": Kind(
        _nouns("dog cat puppy kitten rabbit hamster parrot turtle goldfish/goldfish"),
        _words("old young little small big hungry sleepy lazy friendly noisy brown black white gray spotted playful"),
    ),
    "farm": Kind(
        _nouns("horse cow sheep/sheep goat pig duck chicken hen goose/geese lamb donkey pony"),
        _words("old young little big hungry brown black white gray noisy"),
    ),
    "wild": Kind(
        _nouns("fox owl frog bee squirrel deer/deer bird swan butterfly mouse/mice"),
        _words("little small big brown gray wild shy young"),
    ),
    "mount": Kind(_nouns("horse pony donkey camel"), _words("old young brown white gray gentle tired")),
    "container": Kind(
        _nouns("box bag suitcase backpack envelope parcel package present basket crate"),
        _words("big small heavy empty full brown paper cardboard old new wooden"),
    ),
}

# Verbs: base form (phrasal verbs too), past tense, and the kinds of object they take.
VERBS: list[tuple[str, str, tuple[str, ...]]] = [
    ("eat", "ate", ("fruit", "baked", "meal", "dish", "pantry")),
    ("cook", "cooked", ("dish", "veg")),
    ("bake", "baked", ("baked",)),
    (
        "buy",
        "bought",
        (
            "fruit",
            "veg",
            "baked",
            "pantry",
            "drink",
            "kitchen",
            "clothes",
            "gear",
            "device",
            "gadget",
            "print",
            "small",
            "toy",
            "flower",
            "plant",
            "cycle",
            "art",
        ),
    ),
    (
        "sell",
        "sold",
        ("fruit", "veg", "baked", "clothes", "device", "motor", "cycle", "toy", "flower", "print", "art", "instrument"),
    ),
    ("order", "ordered", ("baked", "meal", "dish", "drink", "gadget", "print")),
    ("drink", "drank", ("drink",)),
    ("pour", "poured", ("drink",)),
    ("make", "made", ("baked", "meal", "dish", "drink", "toy")),
    ("wash", "washed", ("kitchen", "clothes", "motor", "fruit", "veg", "pet")),
    ("clean", "cleaned", ("kitchen", "furniture", "fixture", "structure", "motor", "device", "gear")),
    ("fix", "fixed", ("device", "gadget", "motor", "cycle", "furniture", "structure", "toy")),
    ("repair", "repaired", ("device", "gadget", "motor", "cycle", "structure", "furniture")),
    ("paint", "painted", ("furniture", "fixture", "structure", "cycle", "toy")),
    ("open", "opened", ("container", "fixture", "vessel")),
    ("close", "closed", ("container", "fixture")),
    ("read", "read", ("text", "print")),
    ("write", "wrote", ("text",)),
    ("send", "sent", ("text", "container")),
    ("wear", "wore", ("clothes", "gear")),
    ("put on", "put on", ("clothes", "gear")),
    ("take off", "took off", ("clothes", "gear")),
    ("fold", "folded", ("clothes",)),
    ("iron", "ironed", ("clothes",)),
    ("lose", "lost", ("small", "gear", "print")),
    ("find", "found", ("small", "gear", "print", "toy", "pet", "throwable")),
    ("look for", "looked for", ("small", "gear", "print", "pet", "toy")),
    ("borrow", "borrowed", ("print", "small", "cycle", "gadget", "instrument", "kitchen")),
    ("lend", "lent", ("print", "cycle", "gadget", "instrument", "clothes")),
    ("return", "returned", ("print", "gadget", "cycle", "clothes", "kitchen")),
    ("carry", "carried", ("container", "vessel", "furniture", "pet", "flower")),
    ("lift", "lifted", ("container", "furniture")),
    ("drop", "dropped", ("kitchen", "small", "container", "fruit", "throwable")),
    ("move", "moved", ("furniture", "container", "motor", "cycle")),
    ("feed", "fed", ("pet", "farm", "wild")),
    ("look after", "looked after", ("pet", "farm")),
    ("chase", "chased", ("pet", "farm", "wild", "throwable")),
    ("ride", "rode", ("cycle", "mount")),
    ("drive", "drove", ("motor",)),
    ("park", "parked", ("motor", "cycle")),
    ("plant", "planted", ("plant", "flower", "veg")),
    ("water", "watered", ("plant", "flower")),
    ("pick", "picked", ("flower", "fruit")),
    ("pick up", "picked up", ("small", "toy", "throwable", "container", "print")),
    ("play", "played", ("instrument",)),
    ("draw", "drew", ("pet", "farm", "wild", "flower", "plant", "motor")),
    ("hide", "hid", ("small", "toy", "print", "container", "baked", "art")),
    ("keep", "kept", ("small", "print", "container", "pet", "art")),
    ("share", "shared", ("baked", "meal", "fruit", "text", "toy")),
    ("bring", "brought", ("baked", "meal", "drink", "small", "container", "print", "toy", "instrument")),
    ("take", "took", ("small", "container", "print", "clothes", "kitchen", "toy", "gadget")),
    ("leave", "left", ("small", "gear", "container", "print", "kitchen", "gadget")),
    ("check", "checked", ("text", "print", "device", "motor", "container")),
    ("fill", "filled", ("vessel", "container")),
    ("empty", "emptied", ("vessel", "container")),
    ("wrap", "wrapped", ("container", "baked", "toy")),
    ("pack", "packed", ("container", "clothes", "gear", "meal")),
    ("slice", "sliced", ("fruit", "veg", "baked")),
    ("peel", "peeled", ("fruit", "veg")),
    ("taste", "tasted", ("dish", "drink", "baked", "fruit", "pantry")),
    ("heat", "heated", ("dish",)),
    ("mend", "mended", ("clothes", "gear", "structure")),
    ("sew", "sewed", ("clothes",)),
    ("hang", "hung", ("clothes", "art")),
    ("frame", "framed", ("art",)),
    ("unlock", "unlocked", ("fixture", "motor", "cycle")),
    ("lock", "locked", ("fixture", "motor", "cycle")),
    ("charge", "charged", ("gadget",)),
    ("turn on", "turned on", ("device", "gadget")),
    ("turn off", "turned off", ("device", "gadget")),
    ("catch", "caught", ("throwable", "wild", "pet")),
    ("throw", "threw", ("throwable",)),
    ("kick", "kicked", ("throwable",)),
    ("throw away", "threw away", ("print", "text", "container", "toy", "kitchen")),
    ("give away", "gave away", ("toy", "clothes", "print", "furniture")),
    ("photograph", "photographed", ("pet", "farm", "wild", "flower", "motor")),
    ("cover", "covered", ("furniture", "dish", "plant", "motor", "cycle")),
    ("dry", "dried", ("kitchen", "clothes", "pet")),
    ("brush", "brushed", ("pet", "mount")),
    ("weigh", "weighed", ("fruit", "veg", "container", "pet")),
    ("replace", "replaced", ("device", "furniture", "small", "kitchen")),
    ("deliver", "delivered", ("container", "text", "furniture", "baked", "meal")),
    ("finish", "finished", ("text", "print", "dish", "meal", "drink")),
    ("print", "printed", ("text", "art")),
    ("sketch", "sketched", ("pet", "farm", "wild", "flower")),
    ("count", "counted", ("fruit", "farm", "small", "container")),
    ("sort", "sorted", ("text", "clothes", "fruit", "small")),
]
# Verbs whose object reads naturally only in the plural (counted the sheep, sorted the letters).
PLURAL_ONLY = {"count", "sort"}

# Verbs without an object, with where they happen (None: anywhere indoors or out).
INTRANSITIVE: list[tuple[str, str, list[str] | None]] = [
    ("walk", "walked", _words("park beach forest field bridge hill river lake")),
    ("run", "ran", _words("park beach forest field hill stadium")),
    ("swim", "swam", _words("pool lake river beach")),
    ("climb", "climbed", _words("park playground garden forest")),
    ("jump", "jumped", _words("pool garden playground")),
    ("skate", "skated", _words("park lake playground")),
    ("sleep", "slept", None),
    ("wait", "waited", None),
    ("laugh", "laughed", None),
    ("smile", "smiled", None),
    ("dance", "danced", None),
    ("sing", "sang", None),
    ("work", "worked", None),
    ("study", "studied", None),
    ("rest", "rested", None),
    ("cry", "cried", None),
    ("shout", "shouted", None),
    ("whisper", "whispered", None),
    ("read", "read", None),
    ("cook", "cooked", None),
    ("paint", "painted", None),
    ("sit", "sat", None),
    ("stand", "stood", None),
    ("listen", "listened", None),
    ("write", "wrote", None),
    ("play", "played", None),
    ("talk", "talked", None),
    ("argue", "argued", None),
    ("relax", "relaxed", None),
    ("practice", "practiced", None),
]
ADVERBS = _words("quietly slowly quickly happily patiently carefully loudly softly calmly politely nervously")

NAMES = _words(
    "Anna Tom Maria James Sarah David Emma Peter Lucy Jack Kate Sam Ben Alice Mark Laura Paul "
    "Rachel Henry Grace Mike Julia Nick Helen Chris Emily Daniel Jane Robert Linda Steve Amy "
    "Frank Susan Oliver Rose Adam Nina Leo Clara Ella Max Ruth George Mary John Lisa Andrew "
    "Kevin Sophie Harry Martha Simon Diana"
)
FAMILY = _nouns(
    "mother father brother sister aunt uncle cousin grandmother grandfather son daughter "
    "wife/wives husband nephew niece parent"
)
# People someone can have ("my doctor"); strangers only take the, a and numbers ("a tourist").
ROLES = _nouns(
    "teacher doctor nurse farmer baker driver pilot waiter neighbor manager student artist "
    "writer painter singer dancer cook chef mechanic gardener librarian engineer scientist "
    "lawyer soldier sailor fisherman/fishermen carpenter plumber guard coach captain "
    "friend classmate boss"
)
STRANGERS = _nouns(
    "stranger visitor tourist customer boy girl man/men woman/women child/children baby kid passenger traveler"
)
PEOPLE_ADJ = _words(
    "old young tall kind tired busy friendly clever quiet happy nervous patient new "
    "little brave polite careful angry lonely cheerful sleepy hungry worried"
)

# Places: the noun and the preposition that locates something there.
PLACES: list[tuple[str, str]] = (
    [
        (p, "in")
        for p in _words(
            "kitchen garden park library office village city hotel restaurant cafe "
            "classroom basement attic garage bedroom bathroom hallway yard forest "
            "field museum hospital church shop store bakery playground hall barn "
            "cellar studio pool"
        )
    ]
    + [
        (p, "at")
        for p in _words(
            "station airport market bank zoo stadium gym farm harbor school theater "
            "festival wedding concert party gate bus_stop corner"
        )
    ]
    + [(p, "on") for p in _words("beach bridge hill island train bus balcony roof porch platform")]
    + [(p, "near") for p in _words("river lake mountain castle fountain lighthouse pond tree")]
)
PLACE_PREP = dict(PLACES)
PLACE_ADJ = _words(
    "busy quiet crowded empty old new small big little local beautiful famous dark cold warm sunny noisy peaceful"
)
PLACE_STATE = _words("busy quiet crowded empty cold warm dark noisy peaceful closed open full clean messy")
FURNITURE_PREPS = _words("on under behind beside near next_to")

DAYS = _words("Monday Tuesday Wednesday Thursday Friday Saturday Sunday")
MONTHS = _words("January February March April May June July August September October November December")
SEASONS = _words("spring summer autumn winter")
PARTS_OF_DAY = _words("morning afternoon evening")
MEALS = _words("breakfast lunch dinner supper")
EVENTS = _words(
    "meeting concert class lesson show game match party film movie wedding race trip "
    "holiday picnic festival parade interview exam"
)
OPENING = _words("shop bakery museum library market bank pool cafe store zoo gym")
LEAVING = _words("train bus ferry plane boat")
NUMBERS = _words("two three four five six seven eight nine ten eleven twelve fifteen twenty thirty forty fifty")
CLOCK = _words("one two three four five six seven eight nine ten eleven twelve")
FEELINGS = _words(
    "tired happy hungry sleepy nervous excited bored proud cold sad lonely calm relieved "
    "surprised thirsty sick worried grateful"
)
WEATHER = _words("cold warm hot sunny rainy windy cloudy foggy stormy snowy chilly")
JUDGEMENTS = _words(
    "lovely wonderful beautiful strange funny terrible great perfect delightful awful clever surprising"
)
SPORTS = _words("tennis soccer football golf chess cards basketball baseball volleyball hockey")

# --------------------------------------------------------------------------------------------- #
# Phrase builders.


@dataclass(frozen=True)
class Subject:
    text: str
    third_sg: bool  # takes is / was / has / -s (he, Anna, the teacher)
    be_present: str  # am / is / are
    be_past: str  # was / were

    @property
    def has(self) -> str:
        return "has" if self.third_sg else "have"

    @property
    def does(self) -> str:
        return "does" if self.third_sg else "do"


_PRONOUNS = [
    Subject("I", False, "am", "was"),
    Subject("you", False, "are", "were"),
    Subject("we", False, "are", "were"),
    Subject("they", False, "are", "were"),
    Subject("he", True, "is", "was"),
    Subject("she", True, "is", "was"),
]


def _subject(rng: random.Random) -> Subject:
    r = rng.random()
    if r < 0.32:
        return Subject(rng.choice(NAMES), True, "is", "was")
    if r < 0.5:
        return rng.choice(_PRONOUNS)
    return _person(rng)


_POSSESSIVES = ["my", "our", "your", "his", "her", "their"]
# (nouns, singular determiners, plural determiners, weight)
_PERSON_GROUPS = [
    (ROLES, ["the", "the", "a", *_POSSESSIVES], ["the", "the", "two", "three", "some", "my", "our"], 5),
    (STRANGERS, ["the", "the", "a", "that"], ["the", "two", "three", "some"], 3),
    (FAMILY, _POSSESSIVES, _POSSESSIVES, 3),
]


def _person(rng: random.Random) -> Subject:
    nouns, sg_dets, pl_dets, _ = rng.choices(_PERSON_GROUPS, [g[3] for g in _PERSON_GROUPS])[0]
    noun = rng.choice(nouns)
    adj = rng.choice(PEOPLE_ADJ) + " " if rng.random() < 0.35 else ""
    if rng.random() < 0.25:
        return Subject(f"{rng.choice(pl_dets)} {adj}{noun.pl}", False, "are", "were")
    det = rng.choice(sg_dets)
    return Subject(_a(adj + noun.sg) if det == "a" else f"{det} {adj}{noun.sg}", True, "is", "was")


def _other_person(rng: random.Random, subject: Subject) -> str:
    """Someone other than the subject (never 'Tom called Tom')."""
    while True:
        other = rng.choice(NAMES) if rng.random() < 0.5 else _person(rng).text
        if other != subject.text:
            return other


_DEFINITE = ["the", "the", "the", "my", "your", "our", "his", "her", "their", "this", "that"]


def _object(rng: random.Random, kind: str, form: str = "any") -> str:
    """A noun phrase of the given kind: the old radio, some fresh bread, three red apples.

    form: "any", "definite" (the/my/this ...) or "plural" (plural count nouns, mass nouns as they are).
    """
    k = KINDS[kind]
    noun = rng.choice(k.nouns)
    adj = rng.choice(k.adjectives) + " " if rng.random() < 0.45 else ""
    if noun.pl is None:  # mass noun: no article, no plural
        det = rng.choice(_DEFINITE if form == "definite" else _DEFINITE + ["some", "more"])
        return f"{det} {adj}{noun.sg}"
    r = rng.random() if form == "any" else 0.0 if form == "definite" else 1.0
    if r < 0.45:
        return f"{rng.choice(_DEFINITE)} {adj}{noun.sg}"
    if r < 0.7:
        return _a(adj + noun.sg)
    det = rng.choice(NUMBERS[:9] + ["the", "the", "some", "these", "those", "all the", "both", "my", "our"])
    return f"{det} {adj}{noun.pl}"


def _verb_phrase(rng: random.Random) -> tuple[str, str, str]:
    """(base, past, object) for a transitive verb and an object that fits it."""
    base, past, kinds = rng.choice(VERBS)
    return base, past, _object(rng, rng.choice(kinds), "plural" if base in PLURAL_ONLY else "any")


def _place(rng: random.Random, nouns: list[str] | None = None) -> str:
    noun = rng.choice(nouns) if nouns else rng.choice(PLACES)[0]
    adj = rng.choice(PLACE_ADJ) + " " if rng.random() < 0.25 else ""
    return f"{PLACE_PREP[noun]} the {adj}{noun}"


def _destination(rng: random.Random) -> str:
    adj = rng.choice(PLACE_ADJ) + " " if rng.random() < 0.25 else ""
    return f"the {adj}{rng.choice(PLACES)[0]}"


def _time_past(rng: random.Random) -> str:
    return rng.choice(
        [
            "yesterday",
            "last night",
            "this morning",
            f"on {rng.choice(DAYS)}",
            f"last {rng.choice(DAYS)}",
            f"in {rng.choice(MONTHS)}",
            f"last {rng.choice(SEASONS)}",
            f"{rng.choice(NUMBERS[:8])} days ago",
            f"after {rng.choice(MEALS)}",
            f"before {rng.choice(MEALS)}",
            f"yesterday {rng.choice(PARTS_OF_DAY)}",
            f"after the {rng.choice(EVENTS)}",
            f"during the {rng.choice(EVENTS)}",
            "last week",
            "a week ago",
            f"at {rng.choice(CLOCK)} o'clock",
            "earlier today",
            "at noon",
            "at midnight",
            "last year",
        ]
    )


def _time_future(rng: random.Random) -> str:
    return rng.choice(
        [
            "tomorrow",
            "tonight",
            "later today",
            "next week",
            f"on {rng.choice(DAYS)}",
            f"next {rng.choice(DAYS)}",
            f"in {rng.choice(MONTHS)}",
            f"next {rng.choice(SEASONS)}",
            f"after {rng.choice(MEALS)}",
            f"before {rng.choice(MEALS)}",
            f"tomorrow {rng.choice(PARTS_OF_DAY)}",
            f"after the {rng.choice(EVENTS)}",
            f"at {rng.choice(CLOCK)} o'clock",
            "soon",
            "this weekend",
            f"in {rng.choice(NUMBERS[:6])} days",
            "next month",
            "at noon",
        ]
    )


def _time_habit(rng: random.Random) -> str:
    return rng.choice(
        [
            "every day",
            f"every {rng.choice(PARTS_OF_DAY)}",
            f"on {rng.choice(DAYS)}s",
            f"after {rng.choice(MEALS)}",
            f"before {rng.choice(MEALS)}",
            f"in the {rng.choice(PARTS_OF_DAY)}",
            "on weekends",
            "every week",
            f"in the {rng.choice(SEASONS)}",
            "twice a week",
            "once a month",
            "after work",
            "after school",
        ]
    )


def _maybe(rng: random.Random, p: float, text: str) -> str:
    return f" {text}" if rng.random() < p else ""


# --------------------------------------------------------------------------------------------- #
# Sentence shapes. Each returns one sentence, lower-case apart from names, days and months, with
# its final punctuation; `make_sentences` checks the length and capitalises it.


def _past_statement(rng: random.Random) -> str:
    s = _subject(rng)
    _, past, obj = _verb_phrase(rng)
    return f"{s.text} {past} {obj}{_maybe(rng, 0.25, _place(rng))}{_maybe(rng, 0.5, _time_past(rng))}."


def _modal_statement(rng: random.Random) -> str:
    s = _subject(rng)
    base, _, obj = _verb_phrase(rng)
    aux = rng.choice(
        [
            "will",
            "is going to",
            "might",
            "should",
            "can",
            "wants to",
            "needs to",
            "has to",
            "would like to",
            "forgot to",
            "promised to",
            "plans to",
            "tried to",
            "hopes to",
        ]
    )
    if not s.third_sg:
        aux = {
            "is going to": f"{s.be_present} going to",
            "wants to": "want to",
            "needs to": "need to",
            "has to": "have to",
            "plans to": "plan to",
            "hopes to": "hope to",
        }.get(aux, aux)
    time = _time_past(rng) if aux in ("forgot to", "promised to", "tried to") else _time_future(rng)
    return f"{s.text} {aux} {base} {obj}{_maybe(rng, 0.6, time)}."


def _habit_statement(rng: random.Random) -> str:
    s = _subject(rng)
    base, _, obj = _verb_phrase(rng)
    freq = rng.choice(["", "", "usually ", "often ", "always ", "never ", "sometimes ", "rarely "])
    return f"{s.text} {freq}{_third_person(base) if s.third_sg else base} {obj} {_time_habit(rng)}."


def _progressive_statement(rng: random.Random) -> str:
    s = _subject(rng)
    base, _, obj = _verb_phrase(rng)
    be = s.be_present if rng.random() < 0.6 else s.be_past
    return f"{s.text} {be} {_ing(base)} {obj}{_maybe(rng, 0.5, _place(rng))}."


def _intransitive_statement(rng: random.Random) -> str:
    s = _subject(rng)
    base, past, places = rng.choice(INTRANSITIVE)
    adv = _maybe(rng, 0.5, rng.choice(ADVERBS))
    if rng.random() < 0.6:
        return f"{s.text} {past}{adv} {_place(rng, places)}{_maybe(rng, 0.4, _time_past(rng))}."
    return f"{s.text} {_third_person(base) if s.third_sg else base}{adv} {_time_habit(rng)}."


def _motion_statement(rng: random.Random) -> str:
    s = _subject(rng)
    verb = rng.choice(
        [
            "went to",
            "walked to",
            "drove to",
            "ran to",
            "hurried to",
            "came back from",
            "arrived at",
            "returned to",
            "left",
            "rode to",
            "cycled to",
            "stayed at",
        ]
    )
    company = _maybe(rng, 0.3, f"with {rng.choice(['her', 'his', 'my', 'their'])} {rng.choice(FAMILY).sg}")
    return f"{s.text} {verb} {_destination(rng)}{company}{_maybe(rng, 0.5, _time_past(rng))}."


def _yes_no_question(rng: random.Random) -> str:
    s = _subject(rng)
    base, _, obj = _verb_phrase(rng)
    r = rng.random()
    if r < 0.4:
        return f"did {s.text} {base} {obj}{_maybe(rng, 0.5, _time_past(rng))}?"
    if r < 0.65:
        return f"{s.does} {s.text} {rng.choice(['', 'often ', 'usually ', 'ever '])}{base} {obj}?"
    if r < 0.85:
        return f"will {s.text} {base} {obj}{_maybe(rng, 0.6, _time_future(rng))}?"
    return f"{s.be_present} {s.text} {_ing(base)} {obj}{_maybe(rng, 0.5, _place(rng))}?"


def _wh_question(rng: random.Random) -> str:
    s = _subject(rng)
    base, past, kinds = rng.choice(VERBS)
    kind = rng.choice(kinds)
    noun = rng.choice(KINDS[kind].nouns)
    r = rng.random()
    if r < 0.2:
        return f"where did {s.text} {rng.choice(['put', 'leave', 'hide', 'find', 'buy', 'keep'])} the {noun.sg}?"
    form = "plural" if base in PLURAL_ONLY else "definite"
    if r < 0.35:
        return f"why did {s.text} {base} {_object(rng, kind, form)}{_maybe(rng, 0.4, _time_past(rng))}?"
    if r < 0.5:
        return f"when will {s.text} {base} {_object(rng, kind, form)}?"
    if r < 0.65:
        return f"who {past} {_object(rng, kind, form)}{_maybe(rng, 0.5, _place(rng))}?"
    if r < 0.8 and noun.pl is not None and noun.pl != noun.sg:
        return f"how many {noun.pl} {rng.choice(['did', s.does])} {s.text} {base}?"
    if r < 0.9:
        return f"what did {s.text} {base} {_place(rng)}{_maybe(rng, 0.4, _time_past(rng))}?"
    return f"which {noun.sg} did {s.text} {base}?"


def _request(rng: random.Random) -> str:
    base, past, obj = _verb_phrase(rng)
    return rng.choice(
        [
            f"can you {base} {obj}, please?",
            f"could you {base} {obj} for me?",
            f"could you help me {base} {obj}?",
            f"would you mind if I {past} {obj}?",
            f"shall we {base} {obj} {_time_future(rng)}?",
            f"do you want to {base} {obj}?",
            f"would you like to {base} {obj}?",
            f"may I {base} {obj}?",
            f"can we {base} {obj} {_place(rng)}?",
            f"is it okay to {base} {obj} {_time_future(rng)}?",
        ]
    )


def _command(rng: random.Random) -> str:
    base, _, obj = _verb_phrase(rng)
    furniture = rng.choice(KINDS["furniture"].nouns).sg
    thing = _object(rng, rng.choice(["small", "kitchen", "print", "container", "toy", "gadget"]), "definite")
    return rng.choice(
        [
            f"please {base} {obj}{_maybe(rng, 0.4, _time_future(rng))}.",
            f"don't forget to {base} {obj}{_maybe(rng, 0.4, _time_future(rng))}.",
            f"{base} {obj} before {rng.choice(MEALS)}.",
            f"please don't {base} {obj}.",
            f"put {thing} {rng.choice(FURNITURE_PREPS)} the {furniture}.",
            f"let's {base} {obj}{_maybe(rng, 0.5, _time_future(rng))}.",
            f"remember to {base} {obj} {_time_future(rng)}.",
            f"take {_object(rng, 'pet', 'definite')} to {_destination(rng)}.",
            f"bring {thing} {rng.choice(['to me', 'inside', 'upstairs', 'downstairs', 'here'])}, please.",
            f"try to {base} {obj} {rng.choice(['quietly', 'slowly', 'quickly', 'carefully', 'gently'])}.",
        ]
    )


def _exclamation(rng: random.Random) -> str:
    kind = rng.choice(list(KINDS))
    k = KINDS[kind]
    noun = rng.choice(k.nouns)
    judge = rng.choice(JUDGEMENTS)
    s = _subject(rng)
    described = f"{rng.choice(k.adjectives)} {noun.sg}"
    return rng.choice(
        [
            f"what {_a(judge + ' ' + noun.sg) if noun.pl else judge + ' ' + noun.sg} that is!",
            f"what {_a(described) if noun.pl else described} {s.text} {s.has}!",
            f"that {rng.choice(EVENTS)} was {rng.choice(['really', 'very', 'quite', 'so'])} {judge}!",
            f"the {rng.choice(PLACES)[0]} looks {judge} {rng.choice(['today', 'tonight', 'this morning'])}!",
            f"how {rng.choice(WEATHER + ['quiet', 'noisy', 'dark', 'busy', 'crowded', 'peaceful'])} it is "
            f"{rng.choice(['today', 'outside', 'in here', 'tonight'])}!",
            f"this {noun.sg} {'smells' if kind in ('dish', 'drink', 'baked', 'meal', 'flower') else 'looks'} {judge}!",
        ]
    )


def _description(rng: random.Random) -> str:
    s = _subject(rng)
    r = rng.random()
    if r < 0.2:
        how = rng.choice(["very ", "really ", "quite ", "so ", "", "", ""])
        be = rng.choice([s.be_present, s.be_past])
        return f"{s.text} {be} {how}{rng.choice(FEELINGS)} after the {rng.choice(EVENTS)}."
    kind = rng.choice(
        [
            "pet",
            "wild",
            "container",
            "toy",
            "fruit",
            "flower",
            "small",
            "furniture",
            "print",
            "kitchen",
            "gear",
            "instrument",
            "gadget",
        ]
    )
    noun = rng.choice(KINDS[kind].nouns)
    adj = rng.choice(KINDS[kind].adjectives)
    if r < 0.35:
        return f"there {rng.choice(['are', 'were'])} {rng.choice(NUMBERS)} {noun.pl} {_place(rng)}."
    if r < 0.5:
        where = rng.choice(["", "", "at home", "at work", "in the car", "in the kitchen", "upstairs", "in a box"])
        return f"{s.text} {rng.choice([s.has, 'had'])} {_a(adj + ' ' + noun.sg)}{' ' + where if where else ''}."
    if r < 0.65:
        furniture = rng.choice(KINDS["furniture"].nouns).sg
        return f"the {adj} {noun.sg} {rng.choice(['is', 'was'])} {rng.choice(FURNITURE_PREPS)} the {furniture}."
    if r < 0.8:
        return f"the {rng.choice(PLACES)[0]} was {rng.choice(PLACE_STATE)} {_time_past(rng)}."
    if r < 0.9:
        how = rng.choice(["really", "very", "quite", "rather", "so"])
        return f"the {adj} {noun.sg} {rng.choice(['is', 'was'])} {how} {rng.choice(JUDGEMENTS)}."
    return f"I think the {noun.sg} is {rng.choice(['too', 'very', 'quite', 'rather'])} {adj}."


def _schedule(rng: random.Random) -> str:
    group = rng.random()
    if group < 0.4:
        thing, verbs = rng.choice(EVENTS), ["starts", "begins", "ends", "started", "began", "ended"]
    elif group < 0.7:
        thing, verbs = rng.choice(OPENING), ["opens", "closes", "opened", "closed"]
    else:
        thing, verbs = rng.choice(LEAVING), ["leaves", "arrives", "left", "arrived"]
    verb = rng.choice(verbs)
    clock = rng.choice(CLOCK)
    when = rng.choice(
        [
            f"at {clock}",
            f"at {clock} o'clock",
            f"at half past {clock}",
            f"at {clock} thirty",
            f"at a quarter past {clock}",
            "at noon",
            "at midnight",
            "early",
            "late",
        ]
    )
    day = rng.choice(
        [f"on {rng.choice(DAYS)}", "today", "every day", "on weekends"]
        if verb.endswith("s")
        else [f"on {rng.choice(DAYS)}", "yesterday", "last night"]
    )
    return f"the {thing} {verb} {when}{_maybe(rng, 0.4, day)}."


def _weather(rng: random.Random) -> str:
    w = rng.choice(WEATHER)
    return rng.choice(
        [
            f"it was {rng.choice(['', 'very ', 'really ', 'quite '])}{w} {_time_past(rng)}.",
            f"it will be {w} {_time_future(rng)}.",
            f"it is often {w} in {rng.choice(MONTHS)}.",
            f"the {rng.choice(['rain', 'wind', 'snow', 'fog', 'storm', 'heat'])} "
            f"{rng.choice(['stopped', 'started', 'came back', 'got worse', 'ended'])} {_time_past(rng)}.",
            f"{_subject(rng).text} stayed home because it was {w}.",
            f"was it {w} {_place(rng)} {_time_past(rng)}?",
        ]
    )


def _sport(rng: random.Random) -> str:
    s = _subject(rng)
    sport = rng.choice(SPORTS)
    r = rng.random()
    if r < 0.4:
        return f"{s.text} played {sport} with {_other_person(rng, s)} {_time_past(rng)}."
    if r < 0.7:
        return f"{s.text} {'plays' if s.third_sg else 'play'} {sport} {_time_habit(rng)}."
    if r < 0.85:
        return f"{s.does} {s.text} like playing {sport}?"
    return f"{s.text} {s.be_present} learning to play {sport}."


def _wants(rng: random.Random) -> str:
    s = _subject(rng)
    kind = rng.choice(
        [
            "fruit",
            "baked",
            "meal",
            "pantry",
            "drink",
            "clothes",
            "gear",
            "gadget",
            "print",
            "small",
            "toy",
            "instrument",
            "cycle",
            "pet",
            "flower",
            "art",
        ]
    )
    verb = rng.choice(["want", "need", "would like", "asked for", "got", "chose", "wanted", "needed"])
    if verb in ("want", "need") and s.third_sg:
        verb += "s"
    purpose = rng.choice(["for the trip", "for school", "for the party", "as a gift", "for work", "for later"])
    return f"{s.text} {verb} {_object(rng, kind)}{_maybe(rng, 0.3, purpose)}."


def _social(rng: random.Random) -> str:
    s = _subject(rng)
    verb = rng.choice(
        [
            "called",
            "met",
            "helped",
            "visited",
            "thanked",
            "invited",
            "greeted",
            "phoned",
            "waited for",
            "looked for",
            "talked to",
            "wrote to",
            "smiled at",
            "waved to",
        ]
    )
    where, when = _maybe(rng, 0.4, _place(rng)), _maybe(rng, 0.4, _time_past(rng))
    return f"{s.text} {verb} {_other_person(rng, s)}{where}{when}."


# Weights favour the shapes with the most open slots, which carry most of the vocabulary.
_SHAPES: list[tuple[Callable[[random.Random], str], int]] = [
    (_past_statement, 14),
    (_modal_statement, 9),
    (_habit_statement, 6),
    (_progressive_statement, 6),
    (_intransitive_statement, 6),
    (_motion_statement, 5),
    (_yes_no_question, 8),
    (_wh_question, 8),
    (_request, 6),
    (_command, 7),
    (_exclamation, 4),
    (_description, 8),
    (_schedule, 3),
    (_weather, 3),
    (_sport, 3),
    (_wants, 5),
    (_social, 5),
]


def _capitalise(sentence: str) -> str:
    # Names, days, months and "I" already carry their capitals; only the first letter is added.
    return sentence[0].upper() + sentence[1:]


class _SimilarityFilter:
    """Accepts a sentence only if it shares at most MAX_SHARED of its words, in order, with every
    sentence accepted before: longest common word subsequence <= MAX_SHARED * the longer length.

    Exact and fast without comparing pairs: a sentence of L words registers every subsequence it
    could share with a too-similar sentence (those of at least floor(MAX_SHARED * L) + 1 words); two
    sentences are too similar exactly when they register a common subsequence. Subsequences are
    stored as hashes of word-id tuples, which (unlike hashes of strings) are the same in every
    process, so the output stays a function of the seed alone.
    """

    MAX_SHARED = (3, 5)  # 60%, as a fraction so the threshold needs no float rounding

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._keys: set[int] = set()

    def add(self, sentence: str) -> bool:
        """Registers the sentence and returns True, or returns False if it is too similar."""
        words = tuple(self._ids.setdefault(w, len(self._ids)) for w in re.findall(r"[a-z']+", sentence.lower()))
        num, den = self.MAX_SHARED
        shortest = num * len(words) // den + 1
        keys = {
            hash(tuple(words[i] for i in idx))
            for m in range(shortest, len(words) + 1)
            for idx in combinations(range(len(words)), m)
        }
        if not keys.isdisjoint(self._keys):
            return False
        self._keys |= keys
        return True


def make_sentences(n: int, seed: int) -> list[str]:
    """n English sentences of 4-12 words ending in . ? or !, the same for the same seed.

    No two of them share more than 60% of their words in the same order (see `_SimilarityFilter`),
    so in particular no two normalise to the same text. The grammar can make over 100,000 such
    sentences (memory grows by about 7 kB per sentence); ValueError when n is negative or more than
    it can make.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    shapes, weights = zip(*_SHAPES)
    out: list[str] = []
    accepted = _SimilarityFilter()
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 20 * n + 1000:
            raise ValueError(f"could not make {n} sufficiently different sentences (got {len(out)}); ask for fewer")
        sentence = _capitalise(rng.choices(shapes, weights)[0](rng))
        if MIN_WORDS <= len(sentence.split()) <= MAX_WORDS and accepted.add(sentence):
            out.append(sentence)
    return out
