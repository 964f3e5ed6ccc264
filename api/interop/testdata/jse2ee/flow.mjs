// matrix-js-sdk with its Rust crypto (WASM) against a running engram, as
// Element Web sets up a new account and later signs in elsewhere:
//   1. alice (device A) bootstraps cross-signing (UIA with her password)
//      and secret storage with a recovery key and a new key backup;
//   2. she sends a message in an encrypted room, and the room key reaches
//      the server-side backup;
//   3. she signs in on device B, which cannot decrypt the message; with the
//      recovery key it reads the backup key from secret storage, restores
//      the room keys from the backup and decrypts it. B cross-signs itself
//      with the keys from secret storage, A sees B as verified, and B
//      trusts the backup (signed by the master key).
// Prints "JS E2EE OK" at the end; any failure exits non-zero.
//
// usage: node flow.mjs BASE_URL SUFFIX
import * as sdk from "matrix-js-sdk";
import { decodeRecoveryKey } from "matrix-js-sdk/lib/crypto-api/index.js";

const [baseUrl, suffix] = process.argv.slice(2);
if (!baseUrl || !suffix) {
	console.error("usage: node flow.mjs BASE_URL SUFFIX");
	process.exit(2);
}
// The SDK logs every sync at debug and info; keep warnings and errors.
if (!process.env.JS_SDK_DEBUG) console.debug = console.info = console.trace = () => {};

const password = "correct horse battery staple";
const user = `jsalice${suffix}`;

function fail(msg) {
	throw new Error(msg);
}

async function api(method, path, token, body) {
	const res = await fetch(baseUrl + path, {
		method,
		headers: {
			"Content-Type": "application/json",
			...(token ? { Authorization: `Bearer ${token}` } : {}),
		},
		body: body === undefined ? undefined : JSON.stringify(body),
	});
	const json = await res.json();
	if (!res.ok) fail(`${method} ${path}: ${res.status} ${JSON.stringify(json)}`);
	return json;
}

async function waitFor(what, fn, ms = 30000) {
	const end = Date.now() + ms;
	for (;;) {
		const v = await fn();
		if (v) return v;
		if (Date.now() > end) fail(`timed out waiting for ${what}`);
		await new Promise((r) => setTimeout(r, 200));
	}
}

// The recovery key, as the user would type it in: the secret storage
// callback decodes it (device B never saw device A's copy).
let recoveryKey = null;
const cryptoCallbacks = {
	getSecretStorageKey: async ({ keys }) => {
		if (!recoveryKey) return null;
		const keyId = Object.keys(keys)[0];
		return [keyId, decodeRecoveryKey(recoveryKey)];
	},
};

async function startDevice(login) {
	const client = sdk.createClient({
		baseUrl,
		userId: login.user_id,
		accessToken: login.access_token,
		deviceId: login.device_id,
		cryptoCallbacks,
	});
	await client.initRustCrypto({ useIndexedDB: false });
	const prepared = new Promise((resolve, reject) => {
		client.on(sdk.ClientEvent.Sync, (state, _prev, data) => {
			if (state === "PREPARED") resolve();
			if (state === "ERROR") reject(data?.error ?? new Error("sync error"));
		});
	});
	await client.startClient({ initialSyncLimit: 10 });
	await prepared;
	return client;
}

async function passwordLogin(deviceName) {
	return api("POST", "/_matrix/client/v3/login", null, {
		type: "m.login.password",
		identifier: { type: "m.id.user", user },
		password,
		initial_device_display_name: deviceName,
	});
}

const reg = await api("POST", "/_matrix/client/v3/register", null, {
	username: user,
	password,
	auth: { type: "m.login.dummy" },
	initial_device_display_name: "js device A",
});
const a = await startDevice(reg);
const cryptoA = a.getCrypto();

// 1. Cross-signing, with UIA: the first attempt gets the 401 with the
// flows, the second carries the password.
let uiaCalls = 0;
await cryptoA.bootstrapCrossSigning({
	authUploadDeviceSigningKeys: async (makeRequest) => {
		uiaCalls++;
		await makeRequest({
			type: "m.login.password",
			identifier: { type: "m.id.user", user },
			password,
		});
	},
});
if (uiaCalls !== 1) fail(`authUploadDeviceSigningKeys called ${uiaCalls} times`);
if (!(await cryptoA.isCrossSigningReady())) fail("device A: cross-signing not ready after bootstrap");
const masterA = await cryptoA.getCrossSigningKeyId();

// Secret storage with a recovery key, and a new key backup whose key it
// stores.
const generated = await cryptoA.createRecoveryKeyFromPassphrase();
recoveryKey = generated.encodedPrivateKey;
await cryptoA.bootstrapSecretStorage({
	createSecretStorageKey: async () => generated,
	setupNewKeyBackup: true,
});
if (!(await cryptoA.isSecretStorageReady())) fail("device A: secret storage not ready");
const backupVersion = await waitFor("device A's backup to be active", () => cryptoA.getActiveSessionBackupVersion());
const serverBackup = await api("GET", "/_matrix/client/v3/room_keys/version", reg.access_token);
if (serverBackup.version !== backupVersion) fail(`server's current backup ${serverBackup.version}, client's ${backupVersion}`);
console.log(`cross-signing ${masterA}, backup version ${backupVersion}`);

// 2. An encrypted room and a message.
const { room_id: roomId } = await a.createRoom({
	name: "js e2ee",
	initial_state: [{ type: "m.room.encryption", state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" } }],
});
await waitFor("the room to be encrypted on device A", () => a.getRoom(roomId)?.hasEncryptionStateEvent());
const body = `secret from js ${suffix}`;
const { event_id: eventId } = await a.sendEvent(roomId, "m.room.message", { msgtype: "m.text", body });
const raw = await api("GET", `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/event/${encodeURIComponent(eventId)}`, reg.access_token);
if (raw.type !== "m.room.encrypted" || raw.content.algorithm !== "m.megolm.v1.aes-sha2") {
	fail(`the server holds ${raw.type} ${JSON.stringify(raw.content)}, not a megolm event`);
}
const sessionId = raw.content.session_id;
// The session reaches the backup (the client uploads it in the background).
await waitFor("the room key in the server-side backup", async () => {
	const r = await fetch(
		`${baseUrl}/_matrix/client/v3/room_keys/keys/${encodeURIComponent(roomId)}/${encodeURIComponent(sessionId)}?version=${backupVersion}`,
		{ headers: { Authorization: `Bearer ${reg.access_token}` } },
	);
	if (r.status === 404) return false;
	const j = await r.json();
	if (!r.ok) fail(`GET room_keys/keys: ${r.status} ${JSON.stringify(j)}`);
	return j.session_data?.ciphertext ? j : false;
});
const count = (await api("GET", "/_matrix/client/v3/room_keys/version", reg.access_token)).count;
if (count < 1) fail(`backup count ${count} after the upload`);
console.log(`room key ${sessionId} backed up (count ${count})`);

// 3. A new device: it has no room key until it restores the backup.
const loginB = await passwordLogin("js device B");
if (loginB.device_id === reg.device_id) fail("device B got device A's ID");
recoveryKey = null; // B knows nothing until the user types the key in
const b = await startDevice(loginB);
const cryptoB = b.getCrypto();

async function decryptOnB() {
	const ev = new sdk.MatrixEvent(raw);
	await b.decryptEventIfNeeded(ev, { isRetry: true });
	return ev;
}
const before = await decryptOnB();
if (!before.isDecryptionFailure()) fail(`device B decrypted before restoring: ${JSON.stringify(before.getContent())}`);

// The user types in the recovery key. B cross-signs itself with the
// private keys from secret storage (B now trusts its own identity, and A
// sees B as verified through the server's signatures), then takes the
// backup key from secret storage and restores the room keys.
// B learns alice's cross-signing keys from /keys/query first (as Element
// waits for its own identity before offering the recovery key prompt).
if (!(await cryptoB.userHasCrossSigningKeys(loginB.user_id, true))) fail("device B: /keys/query shows no cross-signing keys");
recoveryKey = generated.encodedPrivateKey;
await cryptoB.bootstrapCrossSigning({});
if (!(await cryptoB.isCrossSigningReady())) fail("device B: cross-signing not ready");
if ((await cryptoB.getCrossSigningKeyId()) !== masterA) fail("device B sees another master key");
await waitFor(
	"device A to see device B cross-signed",
	async () => (await cryptoA.getDeviceVerificationStatus(a.getUserId(), loginB.device_id))?.crossSigningVerified,
);

await cryptoB.loadSessionBackupPrivateKeyFromSecretStorage();
const check = await cryptoB.checkKeyBackupAndEnable();
if (!check || check.backupInfo.version !== backupVersion) fail(`device B sees backup ${JSON.stringify(check?.backupInfo)}`);
if (!check.trustInfo.trusted || !check.trustInfo.matchesDecryptionKey) fail(`device B does not trust the backup: ${JSON.stringify(check.trustInfo)}`);
const restored = await cryptoB.restoreKeyBackup();
// (B's per-session downloader may fetch the key from the backup first, so
// imported can be 0 here; either way it came from the server's backup.)
if (restored.total < 1) fail(`restore found nothing: ${JSON.stringify(restored)}`);
console.log(`restored ${restored.imported} of ${restored.total} keys on device B`);

const after = await decryptOnB();
if (after.isDecryptionFailure() || after.getContent().body !== body) {
	fail(`device B after restore: ${after.decryptionFailureReason} ${JSON.stringify(after.getContent())}`);
}

a.stopClient();
b.stopClient();
console.log("JS E2EE OK");
process.exit(0);
