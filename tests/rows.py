"""The two rows of the API reference's example response, as the upstream sends them; tests
derive their variants from these."""

from __future__ import annotations

from typing import Any

ALICE: dict[str, Any] = {
    "name": "Alice",
    "email": "alice@example.com",
    "lastUpdateTime": "2024-10-10T22:56:10.771591Z",
    "apiKey": "aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa",
    "activeDays": 178,
    "role": "admin",
    "signupTime": "2024-01-15T08:30:00Z",
    "lastAutocompleteUsageTime": "2024-10-10T22:56:10Z",
    "lastChatUsageTime": "2024-10-10T20:30:00Z",
    "promptCreditsUsed": 12500,
    "teamStatus": "USER_TEAM_STATUS_APPROVED",
}
BOB: dict[str, Any] = {
    "name": "Bob",
    "email": "bob@example.com",
    "lastUpdateTime": "2024-10-10T18:11:23.980237Z",
    "apiKey": "bbbbbbbb-bbbb-bbbb-bbbb-bbbbbbbbbbbb",
    "activeDays": 210,
    "role": "member",
    "signupTime": "2024-02-01T10:00:00Z",
    "lastAutocompleteUsageTime": "2024-10-10T18:11:23Z",
    "lastChatUsageTime": "2024-10-09T14:22:00Z",
    "lastCommandUsageTime": "2024-10-08T09:15:00Z",
    "promptCreditsUsed": 8300,
    "teamStatus": "USER_TEAM_STATUS_APPROVED",
}
