"""Synthetic dialogues with a hidden per-turn quality (LLM-GELI's CPU substitute for CANDOR / SODA).

A session alternates USER and AGENT turns. Each agent turn has a hidden quality q_t in [0, 1] computed from
observable features of its text (`turn_features`, `turn_quality`):

- question: the turn asks something ("?")                      +0.25
- positive: a warm word (great, love, glad, ...)                +0.20
- on_topic: it names the topic of the user's last turn          +0.20
- negative: a dismissive word (boring, whatever, ...)           -0.30
- too_long: more than `LONG_WORDS` words                        -0.30

q_t = clip(0.35 + sum of the above, 0, 1). The session score (the only label a GELI learner sees) is
R_GE = mean_t q_t + N(0, session_noise^2) (spec section 3 (e)).

`make_dialogue_sessions` builds full sessions (for decomposition and reward-model training);
`make_dialogue_prompts` builds RL rows whose prompt is the history as chat messages ending with a user turn,
so the policy writes the next agent turn.
"""

from __future__ import annotations

import random
import re
from typing import Any

from datamodules.errors import DataConfigError

TOPICS = ("cooking", "hiking", "chess", "gardening", "music", "painting", "running", "photography", "reading",
          "travel", "baking", "cycling", "swimming", "movies", "coffee", "yoga")
POSITIVE = ("great", "love", "wonderful", "glad", "awesome", "happy", "nice", "amazing")
NEGATIVE = ("boring", "whatever", "annoying", "pointless", "dull")
LONG_WORDS = 35
QUALITY_BASE = 0.35
QUALITY_WEIGHTS = {"question": 0.25, "positive": 0.20, "on_topic": 0.20, "negative": -0.30, "too_long": -0.30}

_USER_OPENERS = ("I've been really into {t} lately.", "Last weekend I spent the whole day on {t}.",
                 "My friend got me interested in {t}.", "I'm thinking about taking a class in {t}.",
                 "Do you know much about {t}?", "I finally tried {t} yesterday.")
_USER_FOLLOWUPS = ("Mostly on weekends, when I have time for {t}.", "I started {t} about a year ago.",
                   "{T} helps me relax after work.", "Usually with my sister, she got me into {t}.",
                   "Not sure, {t} just clicked for me.", "Honestly I'm still a beginner at {t}.")
_POSITIVE_BITS = ("That's great!", "I love that.", "How wonderful.", "I'm glad to hear it.", "That sounds awesome.",
                  "Nice!")
_TOPIC_BITS = ("{T} sounds like fun.", "I've heard {t} is relaxing.", "People say {t} takes patience.",
               "{T} is a good way to spend time.")
_GENERIC_BITS = ("I see.", "Okay.", "That is one way to spend the day.", "Right.", "Hmm, alright.")
_NEGATIVE_BITS = ("Honestly that sounds boring.", "Whatever works for you.", "That seems a bit pointless.",
                  "Sounds dull to me.")
_QUESTION_BITS = ("What got you started?", "How often do you get to do it?", "What do you enjoy most about it?",
                  "Who do you usually go with?", "Would you recommend it to a friend?")
_FILLER = ("By the way, I was reading something the other day about how people spend their free time, and it "
           "reminded me of a story from a long time ago that I may tell you about some other time if we ever get "
           "the chance, because it is a long one and it has several parts to it.")
_WORD = re.compile(r"[a-z']+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _last_user_text(history: list[dict] | str) -> str:
    if isinstance(history, str):
        return history
    for message in reversed(history):
        if message.get("role") == "user":
            return str(message.get("content", ""))
    return ""


def turn_features(history: list[dict] | str, turn: str) -> dict[str, bool]:
    """Observable features of an agent `turn` given the chat `history` before it (messages or plain text).

    >>> turn_features([{"role": "user", "content": "I love chess."}], "Chess is great! Who taught you?")
    {'question': True, 'positive': True, 'on_topic': True, 'negative': False, 'too_long': False}
    """
    words = _words(turn)
    user_words = set(_words(_last_user_text(history)))
    return {"question": "?" in turn, "positive": any(w in POSITIVE for w in words),
            "on_topic": any(t in user_words and t in words for t in TOPICS),
            "negative": any(w in NEGATIVE for w in words), "too_long": len(words) > LONG_WORDS}


def turn_quality(history: list[dict] | str, turn: str) -> float:
    """Hidden quality q_t = clip(0.35 + sum of `QUALITY_WEIGHTS` of the present features, 0, 1).

    >>> turn_quality([{"role": "user", "content": "I love chess."}], "Chess is great! Who taught you?")
    1.0
    >>> turn_quality("I love chess.", "Whatever.")
    0.05
    """
    feats = turn_features(history, turn)
    q = QUALITY_BASE + sum(w for name, w in QUALITY_WEIGHTS.items() if feats[name])
    return round(min(1.0, max(0.0, q)), 6)


def _agent_turn(rng: random.Random, topic: str, probs: dict[str, float]) -> str:
    parts = []
    if rng.random() < probs["positive"]:
        parts.append(rng.choice(_POSITIVE_BITS))
    if rng.random() < probs["on_topic"]:
        parts.append(rng.choice(_TOPIC_BITS).format(t=topic, T=topic.capitalize()))
    else:
        parts.append(rng.choice(_GENERIC_BITS))
    if rng.random() < probs["negative"]:
        parts.append(rng.choice(_NEGATIVE_BITS))
    if rng.random() < probs["too_long"]:
        parts.insert(rng.randint(0, len(parts)), _FILLER)
    if rng.random() < probs["question"]:
        parts.append(rng.choice(_QUESTION_BITS))
    return " ".join(parts)


DEFAULT_FEATURE_PROBS = {"positive": 0.5, "on_topic": 0.6, "negative": 0.2, "too_long": 0.2, "question": 0.5}


def _user_turn(rng: random.Random, topic: str, first: bool) -> str:
    return rng.choice(_USER_OPENERS if first else _USER_FOLLOWUPS).format(t=topic, T=topic.capitalize())


def _conversation(rng: random.Random, agent_turns: int, probs: dict[str, float], *, end_with_user: bool
                  ) -> tuple[list[dict], list[float], str]:
    """(messages, q of each agent turn, topic of the last user turn)."""
    messages: list[dict] = []
    qualities: list[float] = []
    topic = rng.choice(TOPICS)
    for k in range(agent_turns):
        opener = k == 0 or rng.random() < 0.3
        if opener and k > 0:
            topic = rng.choice(TOPICS)
        messages.append({"role": "user", "content": _user_turn(rng, topic, opener)})
        turn = _agent_turn(rng, topic, probs)
        qualities.append(turn_quality(messages, turn))
        messages.append({"role": "assistant", "content": turn})
    if end_with_user:
        opener = not messages or rng.random() < 0.3
        if opener and messages:
            topic = rng.choice(TOPICS)
        messages.append({"role": "user", "content": _user_turn(rng, topic, opener)})
    return messages, qualities, topic


def _check_range(name: str, low: int, high: int, minimum: int) -> None:
    if not minimum <= low <= high:
        raise DataConfigError(f"dialogues: need {minimum} <= min_{name} <= max_{name}, got {low} and {high}")


def make_dialogue_sessions(n: int, *, seed: int = 0, min_agent_turns: int = 2, max_agent_turns: int = 5,
                           session_noise: float = 0.05, feature_probs: dict[str, float] | None = None
                           ) -> list[dict[str, Any]]:
    """`n` sessions `{"messages", "quality", "session_score"}`: chat messages (user first, one agent reply per
    user turn), the hidden q_t of each agent turn, and R_GE = mean(q_t) + N(0, session_noise^2).

    >>> s = make_dialogue_sessions(1, seed=0, session_noise=0.0)[0]
    >>> len(s["quality"]) == sum(m["role"] == "assistant" for m in s["messages"])
    True
    >>> abs(s["session_score"] - sum(s["quality"]) / len(s["quality"])) < 1e-9
    True
    """
    if n < 0:
        raise DataConfigError(f"make_dialogue_sessions: n={n} must be >= 0")
    _check_range("agent_turns", min_agent_turns, max_agent_turns, 1)
    if session_noise < 0:
        raise DataConfigError(f"make_dialogue_sessions: session_noise={session_noise} must be >= 0")
    probs = {**DEFAULT_FEATURE_PROBS, **(feature_probs or {})}
    rng = random.Random(f"dialogue-sessions:{seed}")
    out = []
    for _ in range(n):
        messages, quality, _topic = _conversation(rng, rng.randint(min_agent_turns, max_agent_turns), probs,
                                                  end_with_user=False)
        score = sum(quality) / len(quality) + (rng.gauss(0.0, session_noise) if session_noise else 0.0)
        out.append({"messages": messages, "quality": quality, "session_score": score})
    return out


def make_dialogue_prompts(n: int, *, seed: int = 0, min_history_turns: int = 0, max_history_turns: int = 2,
                          feature_probs: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """`n` RL rows `{"prompt", "topic", "history_turns"}`: `prompt` is the chat history (0 to 2 earlier
    user/agent exchanges by default) ending with a user turn, so the policy writes the next agent turn;
    `topic` is the topic of that last user turn. The `geli_rm` reward scores (prompt, completion).

    >>> row = make_dialogue_prompts(1, seed=0)[0]
    >>> row["prompt"][-1]["role"], row["topic"] in row["prompt"][-1]["content"]
    ('user', True)
    """
    if n < 0:
        raise DataConfigError(f"make_dialogue_prompts: n={n} must be >= 0")
    _check_range("history_turns", min_history_turns, max_history_turns, 0)
    probs = {**DEFAULT_FEATURE_PROBS, **(feature_probs or {})}
    rng = random.Random(f"dialogue-prompts:{seed}")
    rows = []
    for _ in range(n):
        k = rng.randint(min_history_turns, max_history_turns)
        messages, _quality, topic = _conversation(rng, k, probs, end_with_user=True)
        rows.append({"prompt": messages, "topic": topic, "history_turns": k})
    return rows
