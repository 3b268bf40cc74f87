"""What the retailer sells: appliances (fridges up to 16,000 yuan) and hotel stays.

A fixed catalogue (not random) so every demo has the same items and a lead rule such as
"viewed a fridge over 5,000 yuan for more than 60 s" finds people in every run.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Product:
    item_id: str
    model: str
    brand: str
    category: str  # the tracking plan's categories: fridge, washer, tv, air_conditioner, ...
    price: float


@dataclass(frozen=True)
class Hotel:
    item_id: str
    name: str
    city: str
    star: int
    price: float  # per night


_LINES: dict[str, list[tuple[str, str, float]]] = {
    "fridge": [
        ("Haier", "BCD-470WDPG", 4999.0),
        ("Haier", "BCD-601WLHTS", 8999.0),
        ("Midea", "BCD-521WKPZM", 3699.0),
        ("Siemens", "KA92NV02TI", 7999.0),
        ("Bosch", "KAN92V80TI", 6499.0),
        ("Panasonic", "NR-EW45TGA", 12999.0),
        ("Casarte", "BCD-628WDCAU1", 15999.0),
        ("Hisense", "BCD-452WFK1DPQ", 2899.0),
        ("Xiaomi", "BCD-483WMSA", 2599.0),
        ("Haier", "BCD-258WDPM", 1999.0),
    ],
    "washer": [
        ("Haier", "EG100MATE2S", 2699.0),
        ("Little Swan", "TG100V88WMUIADY5", 3999.0),
        ("Siemens", "WM12P2602W", 5299.0),
        ("Midea", "MG100V11D", 1599.0),
        ("Bosch", "WGA254Z00W", 6999.0),
    ],
    "tv": [
        ("Hisense", "65E3F", 2999.0),
        ("TCL", "75Q10G", 6999.0),
        ("Xiaomi", "L65M7-EA", 2499.0),
        ("Sony", "XR-77A80J", 15999.0),
        ("Skyworth", "55A3D", 1899.0),
    ],
    "air_conditioner": [
        ("Gree", "KFR-35GW", 3299.0),
        ("Midea", "KFR-72LW", 6799.0),
        ("Daikin", "FTXR336WC", 8999.0),
        ("Haier", "KFR-26GW", 2299.0),
    ],
    "kitchen": [("Midea", "M1-L213B", 499.0), ("Panasonic", "NN-DS1200", 2999.0)],
    "small_appliance": [
        ("Dyson", "V12", 4490.0),
        ("Roborock", "G10S", 3999.0),
        ("Xiaomi", "1C", 999.0),
    ],
}

PRODUCTS: list[Product] = [
    Product(f"P{i + 1:04d}", f"{brand} {model}", brand, category, price)
    for i, (category, brand, model, price) in enumerate(
        (category, *line) for category, lines in _LINES.items() for line in lines
    )
]
FRIDGES = [p for p in PRODUCTS if p.category == "fridge"]
PREMIUM_FRIDGES = [p for p in FRIDGES if p.price >= 5000]
OTHER_PRODUCTS = [p for p in PRODUCTS if p.category != "fridge"]

_HOTEL_NAMES = [
    ("和颐酒店", 3, 420.0),
    ("全季酒店", 3, 360.0),
    ("亚朵酒店", 4, 520.0),
    ("希尔顿酒店", 5, 1280.0),
    ("万豪酒店", 5, 1480.0),
    ("丽思卡尔顿酒店", 5, 2680.0),
    ("半岛酒店", 5, 3280.0),
    ("如家酒店", 2, 220.0),
]
_HOTEL_CITIES = ["北京", "上海", "广州", "深圳", "杭州", "成都", "西安", "厦门", "三亚", "昆明"]

HOTELS: list[Hotel] = [
    Hotel(f"H{i * len(_HOTEL_NAMES) + j + 1:04d}", f"{city}{name}", city, star, price)
    for i, city in enumerate(_HOTEL_CITIES)
    for j, (name, star, price) in enumerate(_HOTEL_NAMES)
]
LUXURY_HOTELS = [h for h in HOTELS if h.price > 2000]

SEARCH_TERMS = [
    "冰箱", "对开门冰箱", "十字门冰箱", "洗衣机", "烘干机", "电视", "75寸电视", "空调",
    "变频空调", "微波炉", "吸尘器", "扫地机器人", "酒店", "三亚酒店", "fridge", "Dyson",
]  # fmt: skip
