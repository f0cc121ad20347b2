"""Room templates of the ALFWorld task generator, and the room layouts sampled from them.

A `RoomSpec` lists a room's receptacle classes with (min, max) counts and the objects that may
appear; `sample_layout` draws one `Layout` (numbered receptacles, where the desk lamp stands).
`ROOM_SIZES` holds the three sets of templates: "full" (ALFWorld-like rooms), "small" and "few".
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import random


@dataclasses.dataclass(frozen=True)
class RoomSpec:
    """A room template: receptacle classes with (min, max) counts, the objects that may appear."""

    name: str
    receptacles: dict  # class -> (min, max)
    objects: tuple
    lamp_holders: tuple = ()  # receptacle classes a desk lamp can stand on (rooms with a lamp)


ROOMS = {
    "kitchen": RoomSpec(
        "kitchen",
        {"Cabinet": (3, 12), "CounterTop": (1, 3), "Drawer": (1, 8), "Fridge": (1, 1),
         "Microwave": (1, 1), "SinkBasin": (1, 2), "StoveBurner": (2, 4), "DiningTable": (0, 2),
         "GarbageCan": (1, 1), "CoffeeMachine": (1, 1), "Toaster": (0, 1), "Shelf": (0, 3),
         "SideTable": (0, 1)},
        ("Apple", "Bowl", "Bread", "ButterKnife", "Cup", "DishSponge", "Egg", "Fork", "Kettle",
         "Knife", "Ladle", "Lettuce", "Mug", "Pan", "PepperShaker", "Plate", "Pot", "Potato",
         "SaltShaker", "SoapBottle", "Spatula", "Spoon", "Tomato", "WineBottle", "Glassbottle"),
    ),
    "livingroom": RoomSpec(
        "livingroom",
        {"Sofa": (1, 1), "ArmChair": (0, 2), "CoffeeTable": (1, 2), "SideTable": (1, 3),
         "TVStand": (0, 1), "Drawer": (0, 4), "Cabinet": (0, 4), "Shelf": (0, 6),
         "Dresser": (0, 1), "GarbageCan": (1, 1), "DiningTable": (0, 1), "Ottoman": (0, 1)},
        ("Book", "Box", "CellPhone", "CreditCard", "KeyChain", "Laptop", "Newspaper", "Pillow",
         "RemoteControl", "Statue", "Vase", "Watch", "TissueBox", "Pen", "Pencil", "Plate",
         "Candle", "WateringCan"),
        lamp_holders=("SideTable", "Dresser"),
    ),
    "bedroom": RoomSpec(
        "bedroom",
        {"Bed": (1, 1), "Desk": (0, 1), "SideTable": (1, 2), "Dresser": (0, 1), "Drawer": (2, 8),
         "Shelf": (0, 6), "GarbageCan": (1, 1), "Safe": (0, 1), "LaundryHamper": (0, 1),
         "ArmChair": (0, 1)},
        ("AlarmClock", "BaseballBat", "BasketBall", "Book", "CD", "CellPhone", "CreditCard",
         "KeyChain", "Laptop", "Pen", "Pencil", "Pillow", "Mug", "Bowl", "Cloth", "TennisRacket",
         "Watch", "Vase", "Statue"),
        lamp_holders=("Desk", "SideTable", "Dresser"),
    ),
    "bathroom": RoomSpec(
        "bathroom",
        {"Toilet": (1, 1), "SinkBasin": (1, 2), "BathtubBasin": (0, 1), "Cabinet": (1, 4),
         "CounterTop": (1, 1), "Drawer": (0, 4), "GarbageCan": (1, 1), "HandTowelHolder": (0, 2),
         "TowelHolder": (0, 1), "ToiletPaperHanger": (1, 1), "Shelf": (0, 2), "Cart": (0, 1)},
        ("Candle", "Cloth", "DishSponge", "HandTowel", "Plunger", "SoapBar", "SoapBottle",
         "SprayBottle", "TissueBox", "ToiletPaper", "Towel", "ScrubBrush"),
    ),
}

# "small" rooms (generate_tasks(room_size="small")): the same four templates with fewer receptacle
# classes and at most one or two of each (3-8 receptacles instead of 6-40), one target instance and
# fewer distractors. A curriculum for tiny models on CPU; the engine, affordances and goals are the same.
SMALL_ROOMS = {
    "kitchen": RoomSpec(
        "kitchen",
        {"Cabinet": (1, 2), "CounterTop": (1, 1), "Fridge": (1, 1), "Drawer": (0, 1), "DiningTable": (0, 1),
         "Microwave": (1, 1), "SinkBasin": (0, 1), "GarbageCan": (0, 1)},
        ROOMS["kitchen"].objects,
    ),
    "livingroom": RoomSpec(
        "livingroom",
        {"Sofa": (1, 1), "CoffeeTable": (1, 1), "SideTable": (1, 1), "Drawer": (0, 1), "Shelf": (0, 2),
         "ArmChair": (0, 1), "Cabinet": (0, 1), "GarbageCan": (0, 1)},
        ROOMS["livingroom"].objects, lamp_holders=("SideTable",),
    ),
    "bedroom": RoomSpec(
        "bedroom",
        {"Bed": (1, 1), "SideTable": (1, 1), "Drawer": (1, 2), "Desk": (0, 1), "Dresser": (0, 1),
         "Shelf": (0, 1), "GarbageCan": (0, 1)},
        ROOMS["bedroom"].objects, lamp_holders=("Desk", "SideTable", "Dresser"),
    ),
    "bathroom": RoomSpec(
        "bathroom",
        {"Toilet": (1, 1), "SinkBasin": (1, 1), "Cabinet": (1, 2), "CounterTop": (0, 1), "Drawer": (0, 1),
         "GarbageCan": (0, 1), "TowelHolder": (0, 1)},
        ROOMS["bathroom"].objects,
    ),
}
# "few" (generate_tasks(room_size="few")): small rooms with six object classes per room template
# (21 in all), each placeable on most receptacles of its room. Every object class is then the goal of
# many training tasks, so a model trained from scratch in minutes meets each name often enough to
# learn to read it from the goal; the others are the distractors in the same room.
_FEW_OBJECTS = {
    "kitchen": ("Apple", "Mug", "Potato", "Bowl", "Tomato", "Cup"),
    "livingroom": ("Book", "Vase", "CellPhone", "RemoteControl", "KeyChain", "Statue"),
    "bedroom": ("AlarmClock", "Book", "Pen", "CD", "CellPhone", "KeyChain"),
    "bathroom": ("SoapBar", "Candle", "ToiletPaper", "SprayBottle", "SoapBottle", "Cloth"),
}
FEW_ROOMS = {name: dataclasses.replace(room, objects=_FEW_OBJECTS[name]) for name, room in SMALL_ROOMS.items()}
ROOM_SIZES = {"full": ROOMS, "small": SMALL_ROOMS, "few": FEW_ROOMS}
# per room size: (min, max) target instances (pick_two: at least 2), (min, max) distractor classes
PLACEMENT = {"full": ((1, 3), (3, 10)), "small": ((1, 1), (2, 5)), "few": ((1, 1), (2, 3))}

OPENABLE = frozenset({"Fridge", "Cabinet", "Microwave", "Drawer", "Safe", "Box"})
MOVABLE_RECEPTACLES = frozenset({"Bowl", "Box", "Cup", "Mug", "Plate", "Pan", "Pot"})
# Receptacle types and object types the alfred domain names in its actions (must be declared).
DOMAIN_RTYPES = ("SinkBasin", "Microwave", "Fridge")
DOMAIN_OTYPES = ("Knife", "ButterKnife")
# The processing appliance of each state-change task; it is not a goal receptacle for that task
# and targets do not start in it (a target in the fridge would count as cool in ALFRED).
APPLIANCE = {
    "pick_clean_then_place_in_recep": "SinkBasin",
    "pick_heat_then_place_in_recep": "Microwave",
    "pick_cool_then_place_in_recep": "Fridge",
}
NEVER_PARENT = frozenset({"Toaster"})


def room_supports(room: RoomSpec, task_type: str) -> bool:
    """Whether a room template can host a task type (appliance / lamp present in every layout)."""
    always = {r for r, (lo, _) in room.receptacles.items() if lo >= 1}
    if task_type == "look_at_obj_in_light":
        return bool(room.lamp_holders)
    if task_type in APPLIANCE:
        return APPLIANCE[task_type] in always
    return True


@dataclasses.dataclass(frozen=True)
class Layout:
    """A room instance: receptacle classes with counts, and where the desk lamp stands."""

    room: str
    counts: tuple  # ((class, n), ...) sorted by class, n >= 1
    lamp_holder: tuple | None  # (class, index) or None

    @property
    def signature(self) -> str:
        """Canonical text of the layout (two layouts are the same iff signatures are equal)."""
        return json.dumps([self.room, list(map(list, self.counts)), self.lamp_holder])

    @property
    def layout_id(self) -> str:
        """Short stable id: room name plus a hash of the signature."""
        return f"{self.room}-{hashlib.sha1(self.signature.encode()).hexdigest()[:8]}"

    def receptacles(self) -> list[tuple[str, int]]:
        """All receptacle instances as (class, index) with index starting at 1."""
        return [(c, i) for c, n in self.counts for i in range(1, n + 1)]

    def classes(self) -> set[str]:
        """Receptacle classes present."""
        return {c for c, _ in self.counts}


def sample_layout(rng: random.Random, room: RoomSpec) -> Layout:
    """Draw receptacle counts for a room template (and a lamp position where the room has one)."""
    counts = {}
    for cls, (lo, hi) in sorted(room.receptacles.items()):
        n = rng.randint(lo, hi)
        if n:
            counts[cls] = n
    lamp = None
    if room.lamp_holders:
        holders = [c for c in room.lamp_holders if c in counts]
        if not holders:
            cls = room.lamp_holders[0]
            counts[cls] = 1
            holders = [cls]
        cls = rng.choice(holders)
        lamp = (cls, rng.randint(1, counts[cls]))
    return Layout(room.name, tuple(sorted(counts.items())), lamp)

