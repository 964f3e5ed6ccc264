"""End-to-end encryption driven by matrix-nio with python3-olm.

Usage: nio_e2ee.py HOMESERVER_URL RUN_ID STORE_DIR
Alice and Bob talk in an encrypted room and each decrypts the other's
message; Bob logs in on a second device, which receives the room key of
Alice's next message and decrypts it; and one-time keys are handed out
once each. Prints "NIO E2EE OK" and exits 0, or prints the failing step
and exits 1.
"""
import asyncio
import json
import os
import sys
import urllib.request

from nio import (
    AsyncClient,
    AsyncClientConfig,
    JoinResponse,
    KeysUploadResponse,
    LoginResponse,
    MegolmEvent,
    RegisterResponse,
    RoomCreateResponse,
    RoomMessageText,
    RoomSendResponse,
    SyncResponse,
)

PASSWORD = "correct horse battery staple"


def fail(step, what):
    print(f"FAIL {step}: {what!r}")
    sys.exit(1)


def client(url, name, store):
    os.makedirs(store, exist_ok=True)
    cfg = AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True)
    return AsyncClient(url, name, store_path=store, config=cfg)


async def setup(c, step):
    """Uploads keys (and queries others') like a client at start."""
    if c.should_upload_keys:
        resp = await c.keys_upload()
        if not isinstance(resp, KeysUploadResponse):
            fail(step + " keys_upload", resp)


async def sync(c, step):
    resp = await c.sync(timeout=3000, full_state=False)
    if not isinstance(resp, SyncResponse):
        fail(step + " sync", resp)
    if c.should_upload_keys:
        await setup(c, step)
    if c.should_query_keys:
        await c.keys_query()
    if c.should_claim_keys:
        await c.keys_claim(c.get_users_for_key_claiming())
    return resp


async def wait_for_text(c, room_id, body, step, rounds=20):
    """Syncs until a decrypted message with body arrives in room_id."""
    undecrypted = None
    for _ in range(rounds):
        resp = await sync(c, step)
        room = resp.rooms.join.get(room_id)
        if room is None:
            continue
        for ev in room.timeline.events:
            if isinstance(ev, RoomMessageText) and ev.body == body:
                if not ev.decrypted:
                    fail(step, "message arrived unencrypted")
                return
            if isinstance(ev, MegolmEvent):
                undecrypted = ev
    fail(step, f"no decrypted message {body!r}; last undecryptable: {undecrypted!r}")


def http(url, method, path, token, body=None):
    req = urllib.request.Request(url + path, method=method, data=None if body is None else json.dumps(body).encode())
    req.add_header("Authorization", "Bearer " + token)
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read())


async def main(url, run_id, store):
    alice_name, bob_name = f"alice{run_id}", f"bob{run_id}"
    for name in (alice_name, bob_name):
        reg = AsyncClient(url, name)
        resp = await reg.register(name, PASSWORD, "register")
        if not isinstance(resp, RegisterResponse):
            fail("register " + name, resp)
        await reg.close()

    alice = client(url, alice_name, os.path.join(store, "alice"))
    bob = client(url, bob_name, os.path.join(store, "bob1"))
    for c, n in ((alice, "alice"), (bob, "bob")):
        resp = await c.login(PASSWORD, device_name=n + " nio")
        if not isinstance(resp, LoginResponse):
            fail("login " + n, resp)
        await setup(c, n)

    resp = await alice.room_create(
        name="secret",
        invite=[bob.user_id],
        initial_state=[{"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}],
    )
    if not isinstance(resp, RoomCreateResponse):
        fail("create encrypted room", resp)
    room_id = resp.room_id
    await sync(bob, "bob first sync")
    resp = await bob.join(room_id)
    if not isinstance(resp, JoinResponse):
        fail("bob join", resp)
    await sync(bob, "bob after join")
    for _ in range(5):
        await sync(alice, "alice sees bob")
        if bob.user_id in alice.rooms[room_id].users and alice.rooms[room_id].encrypted:
            break
    else:
        fail("alice sees bob joined", alice.rooms.get(room_id))

    resp = await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "hello bob"}, ignore_unverified_devices=True)
    if not isinstance(resp, RoomSendResponse):
        fail("alice send encrypted", resp)
    await wait_for_text(bob, room_id, "hello bob", "bob decrypts alice")

    resp = await bob.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "hello alice"}, ignore_unverified_devices=True)
    if not isinstance(resp, RoomSendResponse):
        fail("bob send encrypted", resp)
    await wait_for_text(alice, room_id, "hello alice", "alice decrypts bob")

    # Bob's second device: alice's client sees it in device_lists.changed,
    # claims one of its one-time keys and shares the room key with it.
    bob2 = client(url, bob_name, os.path.join(store, "bob2"))
    resp = await bob2.login(PASSWORD, device_name="bob nio 2")
    if not isinstance(resp, LoginResponse):
        fail("login bob2", resp)
    resp = await bob2.keys_upload()
    if not isinstance(resp, KeysUploadResponse):
        fail("bob2 keys_upload", resp)
    uploaded = resp.signed_curve25519_count
    if uploaded < 2:
        fail("bob2 uploaded one-time keys", uploaded)
    await sync(bob2, "bob2 first sync")
    for _ in range(10):
        await sync(alice, "alice learns of bob2")
        if bob2.device_id in alice.device_store[bob.user_id]:
            break
    else:
        fail("alice sees bob's second device", list(alice.device_store[bob.user_id].keys()))
    resp = await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "hello both"}, ignore_unverified_devices=True)
    if not isinstance(resp, RoomSendResponse):
        fail("alice send after bob2", resp)
    await wait_for_text(bob2, room_id, "hello both", "bob2 decrypts with the shared room key")
    await wait_for_text(bob, room_id, "hello both", "bob decrypts the same message")

    # One-time keys: two claims (bob2 is not syncing, so it does not top
    # its keys up in between) get two different keys, and the count drops
    # by exactly two.
    def count():
        r = http(url, "POST", "/_matrix/client/v3/keys/upload", bob2.access_token, {})
        return r["one_time_key_counts"].get("signed_curve25519", 0)

    before = count()
    if before < 2:
        fail("bob2 has one-time keys left", before)
    claim = {"one_time_keys": {bob.user_id: {bob2.device_id: "signed_curve25519"}}}
    got = []
    for _ in range(2):
        r = http(url, "POST", "/_matrix/client/v3/keys/claim", alice.access_token, claim)
        got += list(r["one_time_keys"][bob.user_id][bob2.device_id].keys())
    if len(got) != 2 or len(set(got)) != 2:
        fail("two claims got two different keys", got)
    if count() != before - 2:
        fail("count after two claims", f"{before} before, {count()} after")

    for c in (alice, bob, bob2):
        await c.close()
    print("NIO E2EE OK")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
