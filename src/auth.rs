//! Credentials: the `--auth` file, and finding the credential behind a secret.
//!
//! One secret serves every dialect (contract: docs/protocols/README.md). Secrets are compared in
//! constant time and never logged, echoed or formatted: `Credential`'s `Debug` leaves the secret
//! out.

use std::cell::RefCell;
use std::fmt;
use std::rc::Rc;

use serde::Deserialize;

/// The account a credential may see: every account (`*`), or one.
pub const ALL_ACCOUNTS: &str = "*";

/// One entry of the credentials file.
#[derive(Deserialize, PartialEq, Eq)]
pub struct Credential {
    pub name: String,
    secret: String,
    pub account: String,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("name", &self.name)
            .field("account", &self.account)
            .finish_non_exhaustive()
    }
}

impl Credential {
    /// Whether this credential may see every account.
    pub fn sees_all(&self) -> bool {
        self.account == ALL_ACCOUNTS
    }
}

#[derive(Deserialize)]
struct CredentialsFile {
    credentials: Vec<Credential>,
}

/// Who may connect: everyone (no `--auth`, loopback only), or the holders of a credential.
#[derive(Debug)]
pub struct Auth {
    /// The credentials file, read again on SIGHUP; `None` without `--auth`.
    path: Option<String>,
    credentials: RefCell<Vec<Rc<Credential>>>,
    /// What every request acts as without `--auth`.
    anonymous: Rc<Credential>,
}

impl Auth {
    /// No authentication: every request acts with a credential that sees every account.
    pub fn open() -> Auth {
        Auth {
            path: None,
            credentials: RefCell::new(Vec::new()),
            anonymous: Rc::new(Credential {
                name: "anonymous".to_owned(),
                secret: String::new(),
                account: ALL_ACCOUNTS.to_owned(),
            }),
        }
    }

    /// Reads a credentials file. The error is one line naming the file and what is wrong.
    pub fn load(path: &str) -> Result<Auth, String> {
        let credentials = read_credentials(path)?;
        let mut auth = Auth::open();
        auth.path = Some(path.to_owned());
        auth.credentials = RefCell::new(credentials.into_iter().map(Rc::new).collect());
        Ok(auth)
    }

    /// Reads the file again (SIGHUP). A credential that did not change keeps its identity, so
    /// sockets holding it are untouched; on any error the old credentials stay in force.
    /// Returns how many credentials are in force now.
    pub fn reload(&self) -> Result<usize, String> {
        let Some(path) = &self.path else {
            return Ok(0);
        };
        let fresh = read_credentials(path)?;
        let mut credentials = self.credentials.borrow_mut();
        let kept: Vec<Rc<Credential>> = fresh
            .into_iter()
            .map(|new| {
                credentials
                    .iter()
                    .find(|old| ***old == new)
                    .cloned()
                    .unwrap_or_else(|| Rc::new(new))
            })
            .collect();
        *credentials = kept;
        Ok(credentials.len())
    }

    /// How many credentials are in force (none at all: nobody can log in).
    pub fn count(&self) -> usize {
        self.credentials.borrow().len()
    }

    /// Whether a credential a socket proved is still in force (after a reload).
    pub fn holds(&self, credential: &Rc<Credential>) -> bool {
        !self.required()
            || self
                .credentials
                .borrow()
                .iter()
                .any(|held| Rc::ptr_eq(held, credential))
    }

    /// The credentials file, with `--auth`.
    pub fn path(&self) -> Option<&str> {
        self.path.as_deref()
    }

    /// Whether requests must carry a credential.
    pub fn required(&self) -> bool {
        self.path.is_some()
    }

    /// The credential whose secret this is. Without `--auth`, anything (even nothing) is let in
    /// as the anonymous credential. Every secret is compared, so the time taken does not tell
    /// which one came close.
    pub fn by_secret(&self, secret: Option<&str>) -> Option<Rc<Credential>> {
        if !self.required() {
            return Some(self.anonymous.clone());
        }
        let secret = secret?;
        let mut found = None;
        for credential in self.credentials.borrow().iter() {
            if constant_time_eq(credential.secret.as_bytes(), secret.as_bytes()) {
                found = Some(credential.clone());
            }
        }
        found
    }

    /// The credential for an HTTP Basic `name:secret` pair.
    pub fn by_basic(&self, name: &str, secret: &str) -> Option<Rc<Credential>> {
        self.by_secret(Some(secret))
            .filter(|credential| !self.required() || credential.name == name)
    }

    /// The credential an HTTP `Authorization` header carries: `Basic` (name:secret, as
    /// `ws://name:secret@host` URLs send it) or `Bearer` (the secret).
    pub fn by_authorization(&self, header: Option<&str>) -> Option<Rc<Credential>> {
        let Some(header) = header else {
            return self.by_secret(None);
        };
        let (scheme, value) = header.trim().split_once(' ')?;
        if scheme.eq_ignore_ascii_case("bearer") {
            return self.by_secret(Some(value.trim()));
        }
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = data_encoding::BASE64.decode(value.trim().as_bytes()).ok()?;
        let pair = String::from_utf8(decoded).ok()?;
        let (name, secret) = pair.split_once(':')?;
        self.by_basic(name, secret)
    }
}

/// The credentials in a file, checked; the error is one line naming the file.
fn read_credentials(path: &str) -> Result<Vec<Credential>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| format!("--auth: cannot read {path}: {err}"))?;
    let file: CredentialsFile = serde_json::from_str(&text)
        .map_err(|err| format!("--auth: {path} is not a credentials file: {err}"))?;
    for (i, credential) in file.credentials.iter().enumerate() {
        if credential.name.is_empty() || credential.secret.is_empty() {
            return Err(format!(
                "--auth: {path}: credentials[{i}] needs a non-empty name and secret"
            ));
        }
        if credential.account.is_empty() {
            return Err(format!(
                "--auth: {path}: credentials[{i}] ({}) needs an account, or \"*\"",
                credential.name
            ));
        }
        // A login that sends only the secret (Bearer, `auth_token`, cable `key`) could not
        // tell which of two such entries it is.
        let same = file.credentials[..i]
            .iter()
            .position(|earlier| earlier.secret == credential.secret);
        if let Some(j) = same {
            return Err(format!(
                "--auth: {path}: credentials[{i}] ({}) has the same secret as credentials[{j}] \
                 ({}); every secret must be different",
                credential.name, file.credentials[j].name
            ));
        }
    }
    Ok(file.credentials)
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_file(text: &str) -> String {
        let path = std::env::temp_dir().join(format!(
            "callwire-auth-{}-{:?}.json",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    }

    #[test]
    fn finds_credentials_by_secret_and_basic() {
        let path = write_file(
            r#"{"credentials":[{"name":"manager","secret":"s3cret","account":"*"},
                               {"name":"desk","secret":"d35k","account":"acc1"}]}"#,
        );
        let auth = Auth::load(&path).unwrap();
        assert!(auth.required());
        assert_eq!(auth.by_secret(Some("d35k")).unwrap().account, "acc1");
        assert!(auth.by_secret(Some("s3cret")).unwrap().sees_all());
        assert!(auth.by_secret(Some("d35")).is_none());
        assert!(auth.by_secret(None).is_none());
        assert!(auth.by_basic("desk", "d35k").is_some());
        assert!(auth.by_basic("manager", "d35k").is_none());
        let shown = format!("{:?}", auth);
        assert!(
            !shown.contains("s3cret") && !shown.contains("d35k"),
            "{shown}"
        );
    }

    #[test]
    fn authorization_headers_basic_and_bearer() {
        let path =
            write_file(r#"{"credentials":[{"name":"desk","secret":"d35k","account":"acc1"}]}"#);
        let auth = Auth::load(&path).unwrap();
        let basic = format!("Basic {}", data_encoding::BASE64.encode(b"desk:d35k"));
        assert_eq!(auth.by_authorization(Some(&basic)).unwrap().name, "desk");
        assert!(auth.by_authorization(Some("Bearer d35k")).is_some());
        let wrong_name = format!("Basic {}", data_encoding::BASE64.encode(b"other:d35k"));
        for header in [
            Some(wrong_name.as_str()),
            Some("Bearer nope"),
            Some("Basic !!"),
            Some("Digest x"),
            None,
        ] {
            assert!(auth.by_authorization(header).is_none(), "{header:?}");
        }
        assert!(Auth::open().by_authorization(None).is_some());
    }

    #[test]
    fn reload_keeps_unchanged_credentials_and_survives_a_broken_file() {
        let path = write_file(
            r#"{"credentials":[{"name":"a","secret":"sa","account":"x"},
                               {"name":"b","secret":"sb","account":"y"}]}"#,
        );
        let auth = Auth::load(&path).unwrap();
        let a = auth.by_secret(Some("sa")).unwrap();
        let b = auth.by_secret(Some("sb")).unwrap();
        std::fs::write(
            &path,
            r#"{"credentials":[{"name":"a","secret":"sa","account":"x"}]}"#,
        )
        .unwrap();
        assert_eq!(auth.reload(), Ok(1));
        assert!(auth.holds(&a), "an unchanged credential is kept");
        assert!(!auth.holds(&b), "a removed credential is gone");
        assert!(auth.by_secret(Some("sb")).is_none());
        std::fs::write(&path, "{broken").unwrap();
        assert!(
            auth.reload()
                .unwrap_err()
                .contains("is not a credentials file")
        );
        assert!(
            auth.holds(&a) && auth.by_secret(Some("sa")).is_some(),
            "old credentials stay"
        );
    }

    #[test]
    fn two_entries_with_one_secret_are_refused_naming_both_not_the_secret() {
        let path = write_file(
            r#"{"credentials":[{"name":"desk","secret":"sh4red","account":"acc1"},
                               {"name":"ops","secret":"0ps","account":"acc2"},
                               {"name":"manager","secret":"sh4red","account":"*"}]}"#,
        );
        let err = Auth::load(&path).unwrap_err();
        assert!(
            err.contains("credentials[2] (manager)") && err.contains("credentials[0] (desk)"),
            "{err}"
        );
        assert!(!err.contains("sh4red") && !err.contains('\n'), "{err}");
        let path = write_file(r#"{"credentials":[]}"#);
        assert_eq!(Auth::load(&path).unwrap().count(), 0);
    }

    #[test]
    fn open_auth_lets_everyone_in_as_all_accounts() {
        let auth = Auth::open();
        assert!(!auth.required());
        assert!(auth.by_secret(None).unwrap().sees_all());
    }

    #[test]
    fn broken_files_are_one_line_errors() {
        let err = Auth::load("/nonexistent/creds.json").unwrap_err();
        assert!(
            err.starts_with("--auth: cannot read /nonexistent/creds.json"),
            "{err}"
        );
        let path = write_file(r#"{"credentials":[{"name":"x","secret":"","account":"*"}]}"#);
        assert!(
            Auth::load(&path)
                .unwrap_err()
                .contains("non-empty name and secret")
        );
        let path = write_file("{not json");
        let err = Auth::load(&path).unwrap_err();
        assert!(
            err.contains("is not a credentials file") && !err.contains('\n'),
            "{err}"
        );
    }
}
