//! People, their identities and the rotating identifiers their app installs
//! advertise. Pure: no I/O, time passed in.

pub mod import;
pub mod index;
pub mod messages;
pub mod person;
pub mod rotating;
pub mod table;

pub use import::{CSV_HEADER, ImportError, people_from_csv, people_from_json_lines};
pub use index::{IdentityChanges, IdentityIndex, MovedIdentity};
pub use messages::{
    Applied, Buyer, ChangeRequest, CheckIn, ConsentChange, Feedback, HeardBeacon, Purchase,
};
pub use person::{Consent, Identity, PersonId, PersonRecord, Purpose, RecordError, Stamps};
pub use rotating::{interval_of, rotating_id, rpik};
pub use table::RotatingIdTable;

#[cfg(test)]
mod newest_word_tests;
