//! The iSymphony dialect (contract: isymphony.md): property filters, the filter message and
//! its `filterResponse`, account scoping by the upgrade's credential, and the event frame (the
//! payload itself).
//!
//! Routing runs per client per event, so it allocates nothing: filters are checked by walking
//! the event's parsed JSON by reference, numbers are formatted into a stack buffer, and the
//! frame is rendered once per event (`Renders`) and shared by every iSymphony client.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::rc::Rc;

use serde_json::{Map, Value, json};

use crate::auth::{Auth, Credential};
use crate::dialect::{Session, push_json_str};
use crate::event::Event;
use crate::frame::Frame;
use crate::hub::{self, Client, Interest, RenderCache};
use crate::limits::Held;
use crate::matcher::RoutingKey;
use crate::metrics::Limit;

/// The wildcard value: any value, but the property must be present.
const ANY: &str = "*";

/// The right form of a filter message, shown in errors about the wrong one.
const EXAMPLE: &str = r#"{"type": "filter", "filters": [{"property": "type", "value": "login"}, {"property": "type", "value": "logout"}]}"#;

/// One filter as the client sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Filter {
    property: Box<str>,
    value: Box<str>,
}

/// One accepted value of a property.
#[derive(Clone, Debug)]
struct Wanted {
    /// The value as sent; a string in the event must equal it.
    text: Box<str>,
    /// When the value is a JSON number, its canonical text (as a number in the event prints).
    number: Option<Box<str>>,
}

/// The filters on one property: alternatives (OR).
#[derive(Clone, Debug)]
struct Group {
    property: Box<str>,
    /// A `*` among the values: any value will do, as long as the property is present.
    any: bool,
    values: Vec<Wanted>,
}

/// A socket's interest: its credential's account, and its property filters (at most
/// `--max-filters`). No filters: every event the account may see.
#[derive(Debug)]
pub struct Filters {
    credential: Rc<Credential>,
    /// The filters in force, as sent (duplicates dropped), for the `filterResponse`.
    listing: Vec<Filter>,
    /// The same filters grouped by property: every group must hold (AND).
    groups: Vec<Group>,
    limit: usize,
    /// The room the filters take, held in the pool every socket's interest shares.
    held: Held,
}

impl Filters {
    pub fn new(credential: Rc<Credential>, limit: usize, held: Held) -> Filters {
        Filters {
            credential,
            listing: Vec::new(),
            groups: Vec::new(),
            limit,
            held,
        }
    }

    /// The bytes the filters take: as sent, and grouped, with every text.
    fn footprint(&self) -> usize {
        use std::mem::size_of;
        let listing: usize = self
            .listing
            .iter()
            .map(|f| f.property.len() + f.value.len())
            .sum();
        let groups: usize = self
            .groups
            .iter()
            .map(|group| {
                let values: usize = group
                    .values
                    .iter()
                    .map(|v| v.text.len() + v.number.as_ref().map_or(0, |n| n.len()))
                    .sum();
                group.property.len() + group.values.capacity() * size_of::<Wanted>() + values
            })
            .sum();
        self.listing.capacity() * size_of::<Filter>()
            + self.groups.capacity() * size_of::<Group>()
            + listing
            + groups
    }

    /// The frame for this socket, if its account may see the event and its filters let it in.
    pub fn route(&self, event: &Event, renders: &mut Renders) -> Option<Frame> {
        if !event.visible_to(&self.credential.account) || !self.passes(event) {
            return None;
        }
        Some(renders.frame(event))
    }

    /// Whether the event passes the filters. Allocates nothing.
    fn passes(&self, event: &Event) -> bool {
        if self.groups.is_empty() {
            return true;
        }
        // A payload that is not a JSON object has no properties.
        let Some(Value::Object(fields)) = &event.json else {
            return false;
        };
        self.groups.iter().all(|group| {
            lookup(fields, &group.property).is_some_and(|value| {
                group.any || group.values.iter().any(|wanted| matches(value, wanted))
            })
        })
    }

    /// Replaces the filters with `filters`, already checked, if they fit in the pool; else
    /// keeps the ones in force and says so.
    fn replace(&mut self, filters: Vec<Filter>) -> Result<(), String> {
        let mut groups: Vec<Group> = Vec::new();
        for filter in &filters {
            let index = match groups.iter().position(|g| g.property == filter.property) {
                Some(index) => index,
                None => {
                    groups.push(Group {
                        property: filter.property.clone(),
                        any: false,
                        values: Vec::new(),
                    });
                    groups.len() - 1
                }
            };
            let group = &mut groups[index];
            if &*filter.value == ANY {
                group.any = true;
            } else {
                group.values.push(Wanted {
                    text: filter.value.clone(),
                    number: canonical_number(&filter.value),
                });
            }
        }
        let listing = std::mem::replace(&mut self.listing, filters);
        let grouped = std::mem::replace(&mut self.groups, groups);
        if !self.held.resize(self.footprint()) {
            (self.listing, self.groups) = (listing, grouped);
            return Err("no room for more filters on this server".to_owned());
        }
        Ok(())
    }
}

/// A property of an event: the top-level field of that exact name, else, for a dotted name,
/// the path through nested objects.
fn lookup<'a>(fields: &'a Map<String, Value>, property: &str) -> Option<&'a Value> {
    if let Some(value) = fields.get(property) {
        return Some(value);
    }
    if !property.contains('.') {
        return None;
    }
    let mut segments = property.split('.');
    let mut node = fields.get(segments.next()?)?;
    for segment in segments {
        node = node.as_object()?.get(segment)?;
    }
    Some(node)
}

/// Whether an event's value equals a filter value, both compared as strings: a string by its
/// text, a number, boolean or null by its JSON text. Objects and arrays match only `*`.
fn matches(value: &Value, wanted: &Wanted) -> bool {
    match value {
        Value::String(text) => **text == *wanted.text,
        Value::Number(number) => {
            let Some(canonical) = &wanted.number else {
                return false;
            };
            let mut text = heapless::String::<32>::new();
            write!(text, "{number}").is_ok() && text.as_str() == &**canonical
        }
        Value::Bool(true) => &*wanted.text == "true",
        Value::Bool(false) => &*wanted.text == "false",
        Value::Null => &*wanted.text == "null",
        Value::Array(_) | Value::Object(_) => false,
    }
}

/// A filter value's text as a JSON number prints (`1.50` as `1.5`), if it is a JSON number.
/// A JSON number starts with `-` or a digit and ends with a digit: serde_json alone would also
/// take whitespace around it, and `"16 "` is not the text of 16.
fn canonical_number(text: &str) -> Option<Box<str>> {
    let (first, last) = (*text.as_bytes().first()?, *text.as_bytes().last()?);
    if (first != b'-' && !first.is_ascii_digit()) || !last.is_ascii_digit() {
        return None;
    }
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Number(number)) => Some(number.to_string().into_boxed_str()),
        _ => None,
    }
}

/// The frame for the current event, rendered once and shared by every iSymphony client.
#[derive(Debug, Default)]
pub struct Renders {
    frame: Option<Frame>,
}

impl RenderCache for Renders {
    fn clear(&mut self) {
        self.frame = None;
    }
}

impl Renders {
    fn frame(&mut self, event: &Event) -> Frame {
        self.frame
            .get_or_insert_with(|| render_event(event))
            .clone()
    }
}

/// The payload exactly as delivered when it is JSON (sharing its bytes), else the payload as a
/// JSON string.
fn render_event(event: &Event) -> Frame {
    if event.json.is_some()
        && let Ok(frame) = Frame::try_from(event.payload.clone())
    {
        return frame;
    }
    let text = String::from_utf8_lossy(&event.payload);
    let mut out = String::with_capacity(text.len() + 2);
    push_json_str(&mut out, &text);
    Frame::from(out)
}

/// The hub asks a socket's filters for its frame; its session replaces them.
impl Interest for RefCell<Filters> {
    fn route(
        &self,
        event: &Event,
        _key: &RoutingKey<'_>,
        renders: &mut hub::Renders,
        out: &mut Vec<Frame>,
    ) {
        out.extend(self.borrow().route(event, renders.cache()));
    }

    fn revoked(&self, auth: &Auth) -> bool {
        !auth.holds(&self.borrow().credential)
    }
}

/// One iSymphony socket's request handling: the filter message.
pub struct ISymphonySession {
    client: Rc<Client>,
    /// The socket's filters and credential, shared with the hub (`client.interest`).
    filters: Rc<RefCell<Filters>>,
}

impl ISymphonySession {
    pub fn new(client: Rc<Client>, filters: Rc<RefCell<Filters>>) -> ISymphonySession {
        ISymphonySession { client, filters }
    }

    fn handle(&mut self, text: &str) -> Result<Value, String> {
        let message = match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(message)) => message,
            Ok(_) => return Err(format!("expected a JSON object, such as {EXAMPLE}")),
            Err(err) => {
                return Err(format!(
                    "invalid JSON ({err}): each filter is an object like \
                     {{\"property\": \"type\", \"value\": \"login\"}}, as in {EXAMPLE}"
                ));
            }
        };
        match message.get("type") {
            Some(Value::String(kind)) if kind == "filter" => {}
            Some(Value::String(kind)) => {
                return Err(format!(
                    "unknown message type \"{}\": only \"filter\" is understood",
                    kind.escape_debug()
                ));
            }
            Some(other) => {
                return Err(format!(
                    "unknown message type {other}: only \"filter\" is understood"
                ));
            }
            None => return Err(format!("missing \"type\": expected {EXAMPLE}")),
        }
        let mut filters = self.filters.borrow_mut();
        let requested = parse_filters(message.get("filters"), filters.limit).map_err(|err| {
            if let FilterError::TooMany { .. } = err {
                self.client.metrics.limit_hits(Limit::Filters).inc();
            }
            err.to_string()
        })?;
        filters.replace(requested).inspect_err(|_| {
            self.client.metrics.limit_hits(Limit::Filters).inc();
        })?;
        let listing: Vec<Value> = filters
            .listing
            .iter()
            .map(|f| json!({"property": &*f.property, "value": &*f.value}))
            .collect();
        Ok(Value::Array(listing))
    }
}

/// The filters a filter message names, checked; duplicates dropped.
/// Why a filter request was refused; its text is the response's `message`.
#[derive(Debug, PartialEq, Eq)]
enum FilterError {
    /// More filters than `--max-filters` (counted as that limit's hit).
    TooMany { given: usize, limit: usize },
    /// The request's shape is wrong.
    Invalid(String),
}

impl std::fmt::Display for FilterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FilterError::TooMany { given, limit } => {
                write!(
                    f,
                    "too many filters: {given} given, at most {limit} allowed"
                )
            }
            FilterError::Invalid(message) => f.write_str(message),
        }
    }
}

fn parse_filters(filters: Option<&Value>, limit: usize) -> Result<Vec<Filter>, FilterError> {
    const SHAPE: &str = r#"a list of {"property": <string>, "value": <string>}"#;
    let list = match filters {
        Some(Value::Array(list)) => list,
        Some(_) => {
            return Err(FilterError::Invalid(format!(
                "\"filters\": expected {SHAPE}"
            )));
        }
        None => {
            return Err(FilterError::Invalid(format!(
                "missing \"filters\": expected {SHAPE}"
            )));
        }
    };
    if list.len() > limit {
        return Err(FilterError::TooMany {
            given: list.len(),
            limit,
        });
    }
    let mut parsed: Vec<Filter> = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let object = item.as_object();
        let field = |name: &str| object.and_then(|o| o.get(name)).and_then(Value::as_str);
        let (Some(property), Some(value)) = (field("property"), field("value")) else {
            return Err(FilterError::Invalid(format!(
                "filters[{i}]: expected {{\"property\": <string>, \"value\": <string>}}"
            )));
        };
        let filter = Filter {
            property: property.into(),
            value: value.into(),
        };
        if !parsed.contains(&filter) {
            parsed.push(filter);
        }
    }
    Ok(parsed)
}

fn response(result: Result<Value, String>) -> Frame {
    let response = match result {
        Ok(filters) => json!({"type": "filterResponse", "status": "success", "filters": filters}),
        Err(message) => json!({"type": "filterResponse", "status": "error", "message": message}),
    };
    Frame::from(response.to_string())
}

impl Session for ISymphonySession {
    fn on_text(&mut self, text: &str, replies: &mut Vec<Frame>) {
        replies.push(response(self.handle(text)));
    }

    fn on_binary(&mut self, _data: &[u8], replies: &mut Vec<Frame>) {
        replies.push(response(Err(format!(
            "binary messages are not understood: send the filter message as text, such as {EXAMPLE}"
        ))));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn event(payload: &str) -> Event {
        Event::new("k".to_owned(), Bytes::copy_from_slice(payload.as_bytes()))
    }

    fn filters(pairs: &[(&str, &str)]) -> Filters {
        let credential = crate::auth::Auth::open().by_secret(None).unwrap();
        let unbounded = crate::limits::BytePool::new(usize::MAX).share();
        let mut filters = Filters::new(credential, 64, unbounded);
        filters
            .replace(
                pairs
                    .iter()
                    .map(|(p, v)| Filter {
                        property: (*p).into(),
                        value: (*v).into(),
                    })
                    .collect(),
            )
            .expect("an unbounded pool");
        filters
    }

    #[test]
    fn same_property_or_different_properties_and() {
        let f = filters(&[("type", "login"), ("type", "logout"), ("username", "mikey")]);
        assert!(f.passes(&event(r#"{"type":"login","username":"mikey"}"#)));
        assert!(f.passes(&event(r#"{"type":"logout","username":"mikey"}"#)));
        assert!(!f.passes(&event(r#"{"type":"dial","username":"mikey"}"#)));
        assert!(!f.passes(&event(r#"{"type":"login","username":"bob"}"#)));
        assert!(!f.passes(&event(r#"{"type":"login"}"#)));
    }

    #[test]
    fn wildcards_scalars_paths_and_non_json() {
        let any = filters(&[("username", "*")]);
        assert!(any.passes(&event(r#"{"username":null}"#)));
        assert!(any.passes(&event(r#"{"username":{"a":1}}"#)));
        assert!(!any.passes(&event(r#"{"type":"dial"}"#)));
        assert!(!any.passes(&event("not json")));
        assert!(!any.passes(&event(r#"["username"]"#)));
        assert!(filters(&[]).passes(&event("not json")));

        let n = filters(&[("n", "16")]);
        assert!(n.passes(&event(r#"{"n":16}"#)) && n.passes(&event(r#"{"n":"16"}"#)));
        assert!(!n.passes(&event(r#"{"n":160}"#)) && !n.passes(&event(r#"{"n":[16]}"#)));
        assert!(filters(&[("n", "1.50")]).passes(&event(r#"{"n":1.50}"#)));
        // fuzz/isymphony_filter's reference caught this: whitespace is not part of a number.
        for spaced in ["16 ", "16\n", "16\t", " 16"] {
            assert!(
                !filters(&[("n", spaced)]).passes(&event(r#"{"n":16}"#)),
                "{spaced:?}"
            );
        }
        assert!(filters(&[("n", "-3")]).passes(&event(r#"{"n":-3}"#)));
        assert!(filters(&[("b", "true")]).passes(&event(r#"{"b":true}"#)));
        assert!(filters(&[("b", "null")]).passes(&event(r#"{"b":null}"#)));
        assert!(!filters(&[("b", "false")]).passes(&event(r#"{"b":true}"#)));

        let path = filters(&[("channel.caller.number", "100")]);
        assert!(path.passes(&event(r#"{"channel":{"caller":{"number":"100"}}}"#)));
        assert!(!path.passes(&event(r#"{"channel":{"caller":{"number":"101"}}}"#)));
        assert!(!path.passes(&event(r#"{"channel":{"caller":"100"}}"#)));
        // An exact top-level name wins over the path.
        let exact = r#"{"channel.caller.number":"200","channel":{"caller":{"number":"100"}}}"#;
        assert!(!path.passes(&event(exact)));
        assert!(filters(&[("channel.caller.number", "200")]).passes(&event(exact)));
    }

    #[test]
    fn frames_carry_the_payload_verbatim_or_as_a_string() {
        let payload = r#"{"type" : "login", "n": 1.50}"#;
        assert_eq!(render_event(&event(payload)).as_str(), payload);
        assert_eq!(render_event(&event("a \"b\"")).as_str(), r#""a \"b\"""#);
    }

    #[test]
    fn one_frame_per_event_shared_by_every_client() {
        let shared = event(r#"{"type":"login"}"#);
        let mut renders = Renders::default();
        let first = renders.frame(&shared);
        let second = renders.frame(&shared);
        assert_eq!(first.as_str().as_ptr(), second.as_str().as_ptr());
        // The JSON frame is the payload's own bytes, not a copy.
        assert_eq!(first.as_str().as_ptr(), shared.payload.as_ptr());
        renders.clear();
        let other = event("text");
        assert_eq!(renders.frame(&other).as_str(), r#""text""#);
    }

    #[test]
    fn parse_errors_name_the_problem() {
        let err = parse_filters(
            Some(&json!([{"property": "a", "value": "b"}, {"property": "a"}])),
            64,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"filters[1]: expected {"property": <string>, "value": <string>}"#
        );
        let three = Value::Array(vec![json!({"property": "a", "value": "b"}); 3]);
        let err = parse_filters(Some(&three), 2).unwrap_err();
        assert_eq!(err, FilterError::TooMany { given: 3, limit: 2 });
        assert_eq!(
            err.to_string(),
            "too many filters: 3 given, at most 2 allowed"
        );
        let dedup = parse_filters(Some(&three), 3).unwrap();
        assert_eq!(dedup.len(), 1);
    }
}
