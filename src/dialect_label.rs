//! Which dialect a socket speaks, as a label: chosen by the upgrade's path, counted in
//! `/metrics`, kept by the hub per client. A leaf: it imports nothing of the crate's.

/// The websocket dialects, chosen by the upgrade request's path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Blackhole,
    ISymphony,
    Cable,
}

impl Dialect {
    pub const ALL: [Dialect; 3] = [Dialect::Blackhole, Dialect::ISymphony, Dialect::Cable];

    /// The dialect served at a path (contract: docs/protocols/README.md, "One port, routed by
    /// path").
    pub fn for_path(path: &str) -> Option<Dialect> {
        match path {
            "/" | "/blackhole" => Some(Dialect::Blackhole),
            "/communication_manager/ws/event" | "/ws/event" => Some(Dialect::ISymphony),
            "/cable" => Some(Dialect::Cable),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::Blackhole => "blackhole",
            Dialect::ISymphony => "isymphony",
            Dialect::Cable => "actioncable",
        }
    }
}
