package log

// The kinds of entries. The numbers are part of the on-disk format: never
// renumber or reuse one; add new kinds at the end of their group.
const (
	// Room events and ephemeral data.
	KindPDU Kind = 1 // a room event (local or received over federation)
	KindEDU Kind = 2 // typing, receipts, presence, device list updates, ...

	// Accounts, devices and sessions.
	KindAccountRegistered  Kind = 100
	KindPasswordChanged    Kind = 101
	KindAccountDeactivated Kind = 102
	KindProfileSet         Kind = 103
	KindDeviceAdded        Kind = 110
	KindDeviceUpdated      Kind = 111
	KindDeviceRemoved      Kind = 112
	KindAccessTokenIssued  Kind = 120
	KindAccessTokenRevoked Kind = 121
	KindRegistrationToken  Kind = 122 // a registration token created, used or deleted

	// Server administration (the Synapse admin API): 130-199.
	KindAdminAction        Kind = 130 // the audit record of an admin action: who did what to whom
	KindUserAdminSet       Kind = 131 // a user made or revoked a server admin
	KindUserModerated      Kind = 132 // a user locked, suspended or shadow-banned (or freed)
	KindAccountReactivated Kind = 133 // a deactivated user active again
	KindRatelimitOverride  Kind = 134 // a user's own rate limits set or removed
	KindRoomBlocked        Kind = 140 // a room blocked (or unblocked) for local users
	KindRoomDeleted        Kind = 141 // an admin's room deletion: its outcome
	KindHistoryPurged      Kind = 142 // a room's history purged up to an event
	KindReportDeleted      Kind = 143 // an event report deleted
	KindServerNoticeRoom   Kind = 144 // the server notices room of a user
	KindExtremitiesDropped Kind = 145 // forward extremities of a room dropped by an admin
	KindServerNameSet      Kind = 150 // the server name the data was created under
	KindRestored           Kind = 151 // a point-in-time restore cut the log here: what followed the cut is gone
	KindErase              Kind = 152 // entries erased: rewritten as tombstones (log.Erasure, erase.go)
	KindErased             Kind = 153 // how Read presents an erased entry (log.Tombstone); never appended

	// Per-user data.
	KindAccountDataSet Kind = 200
	KindFilterStored   Kind = 201
	KindToDeviceSent   Kind = 202
	KindPushRulesSet   Kind = 203
	KindRoomForgotten  Kind = 204
	KindToDeviceAcked  Kind = 205 // a device's sync acknowledged its to-device inbox up to an offset
	KindPusherSet      Kind = 206 // a pusher created, replaced or deleted
	KindPushDelivered  Kind = 207 // a pusher's gateway took its notifications up to an offset

	// Directory.
	KindAliasSet          Kind = 300
	KindAliasRemoved      Kind = 301
	KindRoomVisibilitySet Kind = 302
	KindReportFiled       Kind = 303

	// Media and keys (wave 2).
	KindMediaUploaded    Kind = 400 // local upload or remote media cached
	KindMediaCreated     Kind = 401 // an mxc:// URI reserved for an asynchronous upload
	KindThumbnailStored  Kind = 402
	KindMediaQuarantined Kind = 403 // quarantined or released
	KindMediaDeleted     Kind = 404 // by an admin, by retention, or a purge of the remote cache

	KindKeysUploaded Kind = 410

	// End-to-end encryption (410-449; facts in log/facts/e2ee.go).
	KindKeysClaimed              Kind = 411
	KindCrossSigningKeysUploaded Kind = 412
	KindKeySignaturesUploaded    Kind = 413
	KindBackupVersionChanged     Kind = 414
	KindRoomKeysBackedUp         Kind = 415
	KindRoomKeysDeleted          Kind = 416
	KindOneTimeKeysDiscarded     Kind = 417 // a restore discards the one-time keys a lost suffix may have handed out
	KindRemoteDevicesResynced    Kind = 418 // a remote user's whole device list, fetched from their server (user/devices)

	// Federation infrastructure: keys fetched from other servers and the
	// outbound delivery queue.
	KindServerKeysFetched        Kind = 500 // a remote server's key response, fetched and verified
	KindFederationOutbound       Kind = 510 // log entries (PDUs/EDUs) to deliver to destinations
	KindFederationDelivered      Kind = 511 // a destination acknowledged a transaction
	KindFederationDestinationSet Kind = 512 // a destination marked down (given up) or up again
	KindOpenIDTokenIssued        Kind = 520 // an OpenID token for a third party to check a user's identity

	// Application services (bridges and bots).
	KindAppserviceDelivered Kind = 600 // an appservice acknowledged a transaction: its cursor in the log

	// Server administration.
	KindServerFact Kind = 900 // anything else; the payload names its type
)

var kindNames = map[Kind]string{
	KindPDU:                      "pdu",
	KindEDU:                      "edu",
	KindAccountRegistered:        "account_registered",
	KindPasswordChanged:          "password_changed",
	KindAccountDeactivated:       "account_deactivated",
	KindProfileSet:               "profile_set",
	KindDeviceAdded:              "device_added",
	KindDeviceUpdated:            "device_updated",
	KindDeviceRemoved:            "device_removed",
	KindAccessTokenIssued:        "access_token_issued",
	KindAccessTokenRevoked:       "access_token_revoked",
	KindRegistrationToken:        "registration_token",
	KindAdminAction:              "admin_action",
	KindUserAdminSet:             "user_admin_set",
	KindUserModerated:            "user_moderated",
	KindAccountReactivated:       "account_reactivated",
	KindRatelimitOverride:        "ratelimit_override",
	KindRoomBlocked:              "room_blocked",
	KindRoomDeleted:              "room_deleted",
	KindHistoryPurged:            "history_purged",
	KindReportDeleted:            "report_deleted",
	KindServerNoticeRoom:         "server_notice_room",
	KindExtremitiesDropped:       "extremities_dropped",
	KindServerNameSet:            "server_name_set",
	KindRestored:                 "restored",
	KindErase:                    "erase",
	KindErased:                   "erased",
	KindAccountDataSet:           "account_data_set",
	KindFilterStored:             "filter_stored",
	KindToDeviceSent:             "to_device_sent",
	KindPushRulesSet:             "push_rules_set",
	KindRoomForgotten:            "room_forgotten",
	KindToDeviceAcked:            "to_device_acked",
	KindPusherSet:                "pusher_set",
	KindPushDelivered:            "push_delivered",
	KindAliasSet:                 "alias_set",
	KindAliasRemoved:             "alias_removed",
	KindRoomVisibilitySet:        "room_visibility_set",
	KindReportFiled:              "report_filed",
	KindMediaUploaded:            "media_uploaded",
	KindMediaCreated:             "media_created",
	KindThumbnailStored:          "thumbnail_stored",
	KindMediaQuarantined:         "media_quarantined",
	KindMediaDeleted:             "media_deleted",
	KindKeysUploaded:             "keys_uploaded",
	KindKeysClaimed:              "keys_claimed",
	KindCrossSigningKeysUploaded: "cross_signing_keys_uploaded",
	KindKeySignaturesUploaded:    "key_signatures_uploaded",
	KindBackupVersionChanged:     "backup_version_changed",
	KindRoomKeysBackedUp:         "room_keys_backed_up",
	KindRoomKeysDeleted:          "room_keys_deleted",
	KindOneTimeKeysDiscarded:     "one_time_keys_discarded",
	KindRemoteDevicesResynced:    "remote_devices_resynced",
	KindServerKeysFetched:        "server_keys_fetched",
	KindFederationOutbound:       "federation_outbound",
	KindFederationDelivered:      "federation_delivered",
	KindFederationDestinationSet: "federation_destination_set",
	KindOpenIDTokenIssued:        "openid_token_issued",
	KindAppserviceDelivered:      "appservice_delivered",
	KindServerFact:               "server_fact",
}

// String names the kind for operators (engram log show).
func (k Kind) String() string {
	if n, ok := kindNames[k]; ok {
		return n
	}
	return "unknown"
}
