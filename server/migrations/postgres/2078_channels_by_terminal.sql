-- The open channels a terminal relays: a record that names none of them
-- closes them all (server/src/channel), without scanning every channel.
CREATE INDEX channels_open_by_terminal ON channels (terminal_id) WHERE state = 'open';
