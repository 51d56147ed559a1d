"""Synthetic general-domain Q/A with varied answer forms: the CPU stand-in for WebInstruct-verified
(General-Reasoner, spec 13(e)) and Big-Math (TinyV, spec 15(e)).

About fifty templates cover six answer types: integers, fractions, decimals, quantities with units, lists and
words. Each row also lists `forms`: other ways of writing the same answer ("1/2" for "0.5", "12" or
"12 square centimeters" for "12 cm^2", "seven" for "7", "E" for "east"), several of which a math rule verifier
rejects -- the false negatives an LLM verifier is there to recover.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable
from fractions import Fraction

from datamodules.errors import DataConfigError

ANSWER_TYPES = ("integer", "fraction", "decimal", "unit", "list", "word")

_NUMBER_WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
                 "sixteen seventeen eighteen nineteen twenty").split()
_TENS = {2: "twenty", 3: "thirty", 4: "forty", 5: "fifty", 6: "sixty", 7: "seventy", 8: "eighty", 9: "ninety"}
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")
_OPPOSITES = {"hot": "cold", "up": "down", "early": "late", "full": "empty", "open": "closed", "light": "dark",
              "fast": "slow", "wet": "dry", "heavy": "light", "inside": "outside"}
_PLURALS = {"mouse": "mice", "child": "children", "foot": "feet", "tooth": "teeth", "goose": "geese",
            "person": "people", "man": "men", "woman": "women", "ox": "oxen", "cactus": "cacti"}
_SHAPES = {"triangle": 3, "square": 4, "pentagon": 5, "hexagon": 6, "heptagon": 7, "octagon": 8, "decagon": 10}
_MIXES = {("red", "blue"): "purple", ("red", "yellow"): "orange", ("blue", "yellow"): "green"}
_DIRECTIONS = ("north", "east", "south", "west")
_ROMAN = ((10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I"))

Row = tuple[str, str, list[str]]  # question, answer, other forms of the answer
TEMPLATES: list[tuple[str, str, Callable[[random.Random], Row]]] = []


def _template(name: str, answer_type: str):
    def register(fn: Callable[[random.Random], Row]) -> Callable[[random.Random], Row]:
        TEMPLATES.append((name, answer_type, fn))
        return fn
    return register


def number_word(n: int) -> str:
    """English words for 0 <= n < 100 ("forty-two").

    >>> number_word(7), number_word(42), number_word(90)
    ('seven', 'forty-two', 'ninety')
    """
    if n <= 20:
        return _NUMBER_WORDS[n]
    tens, ones = divmod(n, 10)
    return _TENS[tens] + (f"-{_NUMBER_WORDS[ones]}" if ones else "")


def _frac(x: Fraction) -> str:
    return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"


def _latex(x: Fraction) -> str:
    return f"\\frac{{{x.numerator}}}{{{x.denominator}}}"


def _dec(x: Fraction | float, places: int = 3) -> str:
    text = f"{float(x):.{places}f}".rstrip("0").rstrip(".")
    return text or "0"


def _int_forms(n: int, unit: str | None = None) -> list[str]:
    forms = [f"{n}.0"]
    if 0 <= n <= 20:
        forms.append(number_word(n))
    if unit:
        forms.append(f"{n} {unit}")
    return forms


def _frac_forms(x: Fraction) -> list[str]:
    forms = [_latex(x)] if x.denominator != 1 else []
    exact = 10 ** 6 % x.denominator == 0
    forms.append(_dec(x, 6) if exact else _dec(x, 3))  # 0.333 for 1/3: not exactly equal, a rule rejects it
    forms.append(f"{_dec(x * 100, 2)}%")
    return forms


# ---- integers ------------------------------------------------------------------------------------
@_template("add", "integer")
def _add(rng):
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    return f"What is {a} plus {b}?", str(a + b), _int_forms(a + b)


@_template("subtract", "integer")
def _subtract(rng):
    a, b = rng.randint(50, 99), rng.randint(1, 49)
    return f"What is {a} minus {b}?", str(a - b), _int_forms(a - b)


@_template("multiply", "integer")
def _multiply(rng):
    a, b = rng.randint(2, 12), rng.randint(2, 12)
    return f"What is {a} times {b}?", str(a * b), _int_forms(a * b)


@_template("divide", "integer")
def _divide(rng):
    b, q = rng.randint(2, 9), rng.randint(2, 12)
    return f"What is {b * q} divided by {b}?", str(q), _int_forms(q)


@_template("legs", "integer")
def _legs(rng):
    n = rng.randint(2, 9)
    return f"How many legs do {n} dogs have in total?", str(4 * n), _int_forms(4 * n, "legs")


@_template("apples", "integer")
def _apples(rng):
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    return (f"Anna has {a} apples and buys {b} more. How many apples does she have now?", str(a + b),
            _int_forms(a + b, "apples"))


@_template("weeks", "integer")
def _weeks(rng):
    w = rng.randint(2, 9)
    return f"How many days are there in {w} weeks?", str(7 * w), _int_forms(7 * w, "days")


@_template("remainder", "integer")
def _remainder(rng):
    a, b = rng.randint(20, 99), rng.randint(3, 9)
    return f"What is the remainder when {a} is divided by {b}?", str(a % b), _int_forms(a % b)


@_template("square", "integer")
def _square(rng):
    a = rng.randint(3, 15)
    return f"What is {a} squared?", str(a * a), _int_forms(a * a) + [f"{a}^2"]


@_template("gcd", "integer")
def _gcd(rng):
    g = rng.randint(2, 9)
    a, b = g * rng.randint(2, 7), g * rng.randint(8, 13)
    return f"What is the greatest common divisor of {a} and {b}?", str(math.gcd(a, b)), _int_forms(math.gcd(a, b))


@_template("lcm", "integer")
def _lcm(rng):
    a, b = rng.randint(2, 9), rng.randint(10, 15)
    lcm = a * b // math.gcd(a, b)
    return f"What is the least common multiple of {a} and {b}?", str(lcm), _int_forms(lcm)


@_template("sides", "integer")
def _sides(rng):
    shape = rng.choice(sorted(_SHAPES))
    return f"How many sides does a {shape} have?", str(_SHAPES[shape]), _int_forms(_SHAPES[shape], "sides")


@_template("letters", "integer")
def _letters(rng):
    word = rng.choice(["apple", "banana", "river", "mountain", "pencil", "garden", "window", "elephant"])
    return f"How many letters are in the word '{word}'?", str(len(word)), _int_forms(len(word), "letters")


@_template("larger", "integer")
def _larger(rng):
    a, b = rng.sample(range(10, 200), 2)
    return f"Which number is larger, {a} or {b}?", str(max(a, b)), _int_forms(max(a, b))


@_template("solve_linear", "integer")
def _solve_linear(rng):
    a, x, b = rng.randint(2, 9), rng.randint(-9, 9), rng.randint(1, 20)
    return f"Solve for x: {a}x + {b} = {a * x + b}.", str(x), [f"x = {x}", f"x={x}"]


# ---- fractions -----------------------------------------------------------------------------------
@_template("add_fractions", "fraction")
def _add_fractions(rng):
    d = rng.choice([3, 5, 6, 7, 8, 9])
    a, b = rng.randint(1, d - 1), rng.randint(1, d - 1)
    x = Fraction(a + b, d)
    return f"What is {a}/{d} + {b}/{d}? Give the answer as a simplified fraction.", _frac(x), _frac_forms(x)


@_template("simplify", "fraction")
def _simplify(rng):
    a, b = rng.choice([(1, 2), (2, 3), (3, 4), (1, 3), (2, 5), (3, 8), (5, 6)])
    k = rng.randint(2, 6)
    x = Fraction(a, b)
    return f"Simplify the fraction {a * k}/{b * k}.", _frac(x), _frac_forms(x)


@_template("coin", "fraction")
def _coin(rng):
    n = rng.randint(2, 4)
    x = Fraction(1, 2 ** n)
    return (f"A fair coin is flipped {n} times. What is the probability that every flip is heads?", _frac(x),
            _frac_forms(x))


@_template("die", "fraction")
def _die(rng):
    k = rng.randint(1, 4)
    x = Fraction(6 - k, 6)
    return (f"What is the probability of rolling a number greater than {k} on a fair six-sided die?", _frac(x),
            _frac_forms(x))


@_template("hour_fraction", "fraction")
def _hour_fraction(rng):
    m = rng.choice([10, 12, 15, 20, 30, 40, 45])
    x = Fraction(m, 60)
    return f"What fraction of an hour is {m} minutes?", _frac(x), _frac_forms(x)


@_template("fraction_of", "integer")
def _fraction_of(rng):
    a, b = rng.choice([(1, 2), (1, 3), (2, 3), (3, 4), (2, 5)])
    c = b * rng.randint(2, 10)
    return f"What is {a}/{b} of {c}?", str(a * c // b), _int_forms(a * c // b)


@_template("ratio", "fraction")
def _ratio(rng):
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    x = Fraction(a, a + b)
    return (f"A bag holds {a} red and {b} blue marbles. What fraction of the marbles are red?", _frac(x),
            _frac_forms(x))


# ---- decimals ------------------------------------------------------------------------------------
@_template("to_decimal", "decimal")
def _to_decimal(rng):
    x = Fraction(rng.choice([1, 3, 5, 7]), rng.choice([2, 4, 8, 20]))
    return f"Write {x.numerator}/{x.denominator} as a decimal.", _dec(x, 6), [_frac(x), f"{_dec(x * 100, 2)}%"]


@_template("add_decimals", "decimal")
def _add_decimals(rng):
    a, b = Fraction(rng.randint(11, 99), 10), Fraction(rng.randint(101, 999), 100)
    return f"What is {_dec(a)} + {_dec(b)}?", _dec(a + b), [_frac(a + b), _latex(a + b)]


@_template("percent_of", "decimal")
def _percent_of(rng):
    p, n = rng.choice([5, 10, 15, 20, 25, 50, 75]), rng.randint(2, 30) * 2
    x = Fraction(p * n, 100)
    return f"What is {p}% of {n}?", _dec(x), [_frac(x)] + ([] if x.denominator != 1 else _int_forms(int(x)))


@_template("percent_to_decimal", "decimal")
def _percent_to_decimal(rng):
    p = rng.choice([5, 12, 25, 40, 60, 75, 80])
    x = Fraction(p, 100)
    return f"Convert {p}% to a decimal.", _dec(x), [_frac(x), f"{p}%"]


@_template("money", "decimal")
def _money(rng):
    a, b = Fraction(rng.randint(100, 999), 100), Fraction(rng.randint(100, 999), 100)
    total = f"{float(a + b):.2f}"
    return (f"A pen costs ${float(a):.2f} and a notebook costs ${float(b):.2f}. What is the total cost in dollars?",
            f"${total}", [total, f"{total} dollars", f"\\${total}"])


@_template("average", "decimal")
def _average(rng):
    values = [rng.randint(1, 20) for _ in range(3)]
    x = Fraction(sum(values), 3)
    answer = _frac(x) if x.denominator != 1 else str(x.numerator)
    return f"What is the average of {values[0]}, {values[1]} and {values[2]}?", answer, _frac_forms(x)


@_template("half", "decimal")
def _half(rng):
    n = rng.randint(1, 49) * 2 + 1
    x = Fraction(n, 2)
    return f"What is half of {n}?", _dec(x), [_frac(x), _latex(x), f"{n // 2} and a half"]


# ---- units ---------------------------------------------------------------------------------------
@_template("rectangle_area", "unit")
def _rectangle_area(rng):
    a, b = rng.randint(2, 12), rng.randint(2, 12)
    n = a * b
    return (f"A rectangle is {a} cm long and {b} cm wide. What is its area?", f"{n} cm^2",
            [str(n), f"{n} square centimeters", f"{n} cm²", f"{n}\\,\\text{{cm}}^2"])


@_template("rectangle_perimeter", "unit")
def _rectangle_perimeter(rng):
    a, b = rng.randint(2, 12), rng.randint(2, 12)
    n = 2 * (a + b)
    return (f"A rectangle is {a} m long and {b} m wide. What is its perimeter?", f"{n} m",
            [str(n), f"{n} meters", f"{n} metres"])


@_template("speed", "unit")
def _speed(rng):
    v, t = rng.choice([40, 50, 60, 80, 90]), rng.randint(2, 5)
    return (f"A car travels {v * t} km in {t} hours. What is its average speed?", f"{v} km/h",
            [str(v), f"{v} kilometers per hour", f"{v} km per hour"])


@_template("hours_to_minutes", "unit")
def _hours_to_minutes(rng):
    h = rng.randint(2, 9)
    return f"How many minutes are there in {h} hours?", f"{60 * h} minutes", [str(60 * h), f"{60 * h} min"]


@_template("m_to_cm", "unit")
def _m_to_cm(rng):
    m = rng.randint(2, 9)
    return f"Convert {m} meters to centimeters.", f"{100 * m} cm", [str(100 * m), f"{100 * m} centimeters"]


@_template("minutes_to_hours", "unit")
def _minutes_to_hours(rng):
    h = rng.choice([1, 2, 3, 4]) + Fraction(rng.choice([1, 2, 3]), 4)
    minutes = int(h * 60)
    return (f"Convert {minutes} minutes to hours.", f"{_dec(h)} hours",
            [_dec(h), f"{_frac(h)} hours", f"{int(h)} hours {minutes - 60 * int(h)} minutes"])


@_template("kg_to_g", "unit")
def _kg_to_g(rng):
    x = Fraction(rng.randint(2, 40), 4)
    return f"How many grams are in {_dec(x)} kg?", f"{int(x * 1000)} g", [str(int(x * 1000)), f"{int(x * 1000)} grams"]


@_template("temperature", "unit")
def _temperature(rng):
    a, b = rng.randint(-5, 20), rng.randint(2, 15)
    n = a + b
    return (f"The temperature is {a}°C and rises by {b} degrees. What is the new temperature?", f"{n}°C",
            [str(n), f"{n} degrees Celsius", f"{n}^\\circ C"])


@_template("cube_volume", "unit")
def _cube_volume(rng):
    a = rng.randint(2, 9)
    n = a ** 3
    return f"A cube has edges of {a} cm. What is its volume?", f"{n} cm^3", [str(n), f"{n} cubic centimeters"]


@_template("triangle_angle", "unit")
def _triangle_angle(rng):
    a, b = rng.randint(20, 80), rng.randint(20, 80)
    c = 180 - a - b
    return (f"Two angles of a triangle measure {a}° and {b}°. What is the third angle?", f"{c}°",
            [str(c), f"{c} degrees", f"{c}^\\circ"])


# ---- lists ---------------------------------------------------------------------------------------
def _primes_between(a: int, b: int) -> list[int]:
    return [n for n in range(max(a, 2), b + 1) if all(n % d for d in range(2, int(n ** 0.5) + 1))]


def _list_forms(items: Iterable) -> list[str]:
    items = [str(i) for i in items]
    return [",".join(items), "[" + ", ".join(items) + "]", " and ".join([", ".join(items[:-1]), items[-1]])]


@_template("primes_between", "list")
def _primes(rng):
    while True:
        a = rng.randint(2, 40)
        primes = _primes_between(a, a + 10)
        if 2 <= len(primes) <= 4:
            break
    return (f"List the prime numbers between {a} and {a + 10}, in increasing order.", ", ".join(map(str, primes)),
            _list_forms(primes))


@_template("sort", "list")
def _sort(rng):
    values = rng.sample(range(1, 50), 4)
    ordered = sorted(values)
    return (f"Sort these numbers in increasing order: {', '.join(map(str, values))}.", ", ".join(map(str, ordered)),
            _list_forms(ordered))


@_template("multiples", "list")
def _multiples(rng):
    m, k = rng.randint(2, 9), rng.randint(3, 4)
    items = [m * i for i in range(1, k + 1)]
    return f"What are the first {k} positive multiples of {m}?", ", ".join(map(str, items)), _list_forms(items)


@_template("divisors", "list")
def _divisors(rng):
    n = rng.choice([6, 8, 10, 12, 14, 15, 16, 18, 20, 21])
    items = [d for d in range(1, n + 1) if n % d == 0]
    return f"List all positive divisors of {n} in increasing order.", ", ".join(map(str, items)), _list_forms(items)


@_template("quadratic_roots", "list")
def _quadratic_roots(rng):
    r1, r2 = sorted(rng.sample(range(1, 9), 2))
    return (f"Solve x^2 - {r1 + r2}x + {r1 * r2} = 0. List the roots in increasing order.", f"{r1}, {r2}",
            [f"x = {r1}, x = {r2}", f"{r1},{r2}", f"{r1} and {r2}"])


@_template("midpoint", "list")
def _midpoint(rng):
    x1, y1, x2, y2 = (rng.randint(-8, 8) * 2 for _ in range(4))
    mx, my = (x1 + x2) // 2, (y1 + y2) // 2
    return (f"What is the midpoint of the points ({x1}, {y1}) and ({x2}, {y2})?", f"({mx}, {my})",
            [f"{mx}, {my}", f"({mx},{my})", f"x = {mx}, y = {my}"])


# ---- words ---------------------------------------------------------------------------------------
@_template("weekday", "word")
def _weekday(rng):
    d, k = rng.randrange(7), rng.randint(1, 12)
    day = _DAYS[(d + k) % 7]
    return f"What day of the week is {k} days after {_DAYS[d]}?", day, [day.lower(), day.upper(), day[:3]]


@_template("month", "word")
def _month(rng):
    m, k = rng.randrange(12), rng.randint(1, 11)
    month = _MONTHS[(m + k) % 12]
    return f"Which month comes {k} months after {_MONTHS[m]}?", month, [month.lower(), month[:3]]


@_template("opposite", "word")
def _opposite(rng):
    word = rng.choice(sorted(_OPPOSITES))
    return f"What is the opposite of the word '{word}'?", _OPPOSITES[word], [_OPPOSITES[word].capitalize()]


@_template("paint", "word")
def _paint(rng):
    (a, b), colour = rng.choice(sorted(_MIXES.items()))
    return f"What colour do you get by mixing {a} and {b} paint?", colour, [colour.capitalize(), f"{colour} paint"]


@_template("parity", "word")
def _parity(rng):
    n = rng.randint(10, 999)
    word = "even" if n % 2 == 0 else "odd"
    return f"Is {n} even or odd?", word, [word.capitalize(), f"{n} is {word}"]


@_template("is_prime", "word")
def _is_prime(rng):
    n = rng.randint(10, 60)
    yes = bool(_primes_between(n, n))
    return f"Is {n} a prime number? Answer yes or no.", "yes" if yes else "no", ["Yes" if yes else "No"]


@_template("number_words", "word")
def _number_words(rng):
    n = rng.randint(21, 99)
    word = number_word(n)
    return f"Write the number {n} in words.", word, [word.replace("-", " "), word.capitalize()]


@_template("roman", "word")
def _roman(rng):
    n, out = rng.randint(4, 39), ""
    left = n
    for value, symbol in _ROMAN:
        while left >= value:
            out, left = out + symbol, left - value
    return f"Write {n} in Roman numerals.", out, [out.lower()]


@_template("plural", "word")
def _plural(rng):
    word = rng.choice(sorted(_PLURALS))
    return f"What is the plural of '{word}'?", _PLURALS[word], [_PLURALS[word].capitalize()]


@_template("compass", "word")
def _compass(rng):
    start, turns = rng.randrange(4), rng.randint(1, 3)
    end = _DIRECTIONS[(start + turns) % 4]
    return (f"You face {_DIRECTIONS[start]} and turn {90 * turns} degrees clockwise. Which direction do you face now?",
            end, [end.capitalize(), end[0].upper()])


def make_general_qa(n: int, *, seed: int = 0, answer_types: Iterable[str] | None = None) -> list[dict]:
    """`n` rows ``{"question", "answer", "answer_type", "template", "forms"}`` drawn from the templates.

    `answer_types` keeps only templates of those types (of integer, fraction, decimal, unit, list, word).
    Templates are used round-robin in a seeded order, so every type appears even in small samples; `forms` are
    other correct ways of writing the answer.

    >>> row = make_general_qa(1, seed=3, answer_types=["unit"])[0]
    >>> row["answer_type"], row["question"], row["answer"], row["forms"]
    ('unit', 'How many minutes are there in 9 hours?', '540 minutes', ['540', '540 min'])
    """
    if n < 0:
        raise DataConfigError(f"make_general_qa: n={n} must be >= 0")
    types = tuple(ANSWER_TYPES if answer_types is None else answer_types)
    bad = [t for t in types if t not in ANSWER_TYPES]
    if not types or bad:
        raise DataConfigError(f"make_general_qa: answer_types={list(types)} must be a non-empty choice of "
                              f"{list(ANSWER_TYPES)}")
    pool = [t for t in TEMPLATES if t[1] in types]
    rng = random.Random(seed)
    rows: list[dict] = []
    order: list[int] = []
    for _ in range(n):
        if not order:
            order = list(range(len(pool)))
            rng.shuffle(order)
        name, answer_type, build = pool[order.pop()]
        question, answer, forms = build(rng)
        forms = [f for f in dict.fromkeys(forms) if f != answer]
        rows.append({"question": question, "answer": answer, "answer_type": answer_type, "template": name,
                     "forms": forms})
    return rows
