//! Client seats: `--max-clients` for the websockets that proved who they are (or need not),
//! and a separate, small `--max-unauthenticated` for those that have still to (Blackhole and
//! ActionCable with `--auth`), so sockets that never authenticate cannot take the places of
//! clients that do. The hub's slab holds both (`Limits::hub_slots`).

use std::cell::Cell;
use std::rc::Rc;

use crate::limits::Limits;

/// How many seats of each kind are taken, and how many there are.
#[derive(Debug)]
struct Counts {
    authenticated: Cell<usize>,
    unauthenticated: Cell<usize>,
    max_authenticated: usize,
    max_unauthenticated: usize,
}

/// The seats of the whole server.
#[derive(Debug)]
pub struct Seats(Rc<Counts>);

/// Which bound refused a seat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoSeat {
    /// `--max-clients` authenticated sockets are connected.
    Clients,
    /// `--max-unauthenticated` sockets are waiting to authenticate.
    Unauthenticated,
}

/// One socket's seat, given back when dropped.
#[derive(Debug)]
pub struct Seat {
    counts: Rc<Counts>,
    unauthenticated: Cell<bool>,
}

impl Seats {
    pub fn new(limits: &Limits) -> Seats {
        Seats(Rc::new(Counts {
            authenticated: Cell::new(0),
            unauthenticated: Cell::new(0),
            max_authenticated: limits.max_clients,
            max_unauthenticated: limits.max_unauthenticated,
        }))
    }

    /// A seat for a socket that is authenticated already (or needs no credential).
    pub fn authenticated(&self) -> Result<Seat, NoSeat> {
        self.take(false)
    }

    /// A seat for a socket that has still to authenticate.
    pub fn unauthenticated(&self) -> Result<Seat, NoSeat> {
        self.take(true)
    }

    fn take(&self, unauthenticated: bool) -> Result<Seat, NoSeat> {
        let counts = &self.0;
        let (count, max, refusal) = match unauthenticated {
            true => (
                &counts.unauthenticated,
                counts.max_unauthenticated,
                NoSeat::Unauthenticated,
            ),
            false => (
                &counts.authenticated,
                counts.max_authenticated,
                NoSeat::Clients,
            ),
        };
        if count.get() >= max {
            return Err(refusal);
        }
        count.set(count.get() + 1);
        Ok(Seat {
            counts: counts.clone(),
            unauthenticated: Cell::new(unauthenticated),
        })
    }
}

impl Seat {
    pub fn is_unauthenticated(&self) -> bool {
        self.unauthenticated.get()
    }

    /// Moves an authenticated socket to the clients' seats; `Err` (the seat unchanged) when
    /// `--max-clients` are taken.
    pub fn authenticate(&self) -> Result<(), NoSeat> {
        let counts = &self.counts;
        if !self.unauthenticated.get() {
            return Ok(());
        }
        if counts.authenticated.get() >= counts.max_authenticated {
            return Err(NoSeat::Clients);
        }
        counts.authenticated.set(counts.authenticated.get() + 1);
        counts.unauthenticated.set(counts.unauthenticated.get() - 1);
        self.unauthenticated.set(false);
        Ok(())
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        let count = match self.unauthenticated.get() {
            true => &self.counts.unauthenticated,
            false => &self.counts.authenticated,
        };
        count.set(count.get() - 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli;

    #[test]
    fn unauthenticated_sockets_have_their_own_bound() {
        let seats = Seats::new(&cli::limits_from(&[
            "--max-clients",
            "2",
            "--max-unauthenticated",
            "3",
        ]));
        let waiting: Vec<Seat> = (0..3).map(|_| seats.unauthenticated().unwrap()).collect();
        assert_eq!(
            seats.unauthenticated().unwrap_err(),
            NoSeat::Unauthenticated
        );
        // Three sockets waiting to authenticate leave both clients' seats free.
        let a = seats.authenticated().unwrap();
        assert!(waiting[0].authenticate().is_ok());
        assert!(!waiting[0].is_unauthenticated());
        assert_eq!(waiting[1].authenticate(), Err(NoSeat::Clients));
        assert!(waiting[1].is_unauthenticated());
        assert_eq!(seats.authenticated().unwrap_err(), NoSeat::Clients);
        // The promoted seat freed its waiting place.
        let c = seats.unauthenticated().unwrap();
        drop(a);
        assert!(waiting[1].authenticate().is_ok());
        drop(waiting);
        drop(c);
        assert_eq!(seats.0.authenticated.get(), 0);
        assert_eq!(seats.0.unauthenticated.get(), 0);
    }
}
