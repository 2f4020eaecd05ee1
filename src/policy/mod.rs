//! Who may do what. Pure functions: no I/O, no locks. The refusals, as
//! data, are in [`refusal`].

mod refusal;
mod socks;

pub use refusal::{CommandRefusal, LoginRefusal, PublicRefusal, Refusal, RegisterRefusal, Via};
pub use socks::{SocksClass, classify};

use crate::protocol::{Name, Role};
use crate::store::Identity;

/// Whether `who` may register `asked` as a device name. A device key owns
/// exactly one name, the one it was added with.
pub fn may_register(who: &Identity, asked: &str) -> Result<Name, RegisterRefusal> {
    if who.role != Role::Device {
        return Err(RegisterRefusal::RoleCannotRegister { role: who.role });
    }
    let name = Name::parse(asked).map_err(RegisterRefusal::BadName)?;
    if name != who.name {
        return Err(RegisterRefusal::NotYourName {
            owns: who.name.clone(),
            asked: name,
        });
    }
    Ok(name)
}

/// Whether `port` may be registered as a device port.
pub fn may_register_port(port: u32) -> Result<(), RegisterRefusal> {
    if port == 0 || port > u32::from(u16::MAX) {
        return Err(RegisterRefusal::NotADevicePort { port });
    }
    Ok(())
}

/// Whether `who` may open streams at all (then only within its own system,
/// which holds by construction: lookups use the key's system).
pub fn may_open_streams(who: &Identity) -> Result<(), Refusal> {
    if who.role.may_open_streams() {
        Ok(())
    } else {
        Err(Refusal::RoleCannotOpen { role: who.role })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(role: Role, name: &str) -> Identity {
        Identity {
            system: Name::parse("tau").unwrap(),
            role,
            name: Name::parse(name).unwrap(),
            fingerprint: "SHA256:x".into(),
        }
    }

    #[test]
    fn a_device_registers_only_its_own_name() {
        assert_eq!(
            may_register(&id(Role::Device, "dev1"), "dev1")
                .unwrap()
                .as_str(),
            "dev1"
        );
        assert!(may_register(&id(Role::Device, "dev1"), "dev2").is_err());
        assert!(may_register(&id(Role::Device, "dev1"), "DEV1").is_err());
        assert!(may_register(&id(Role::Controller, "dev1"), "dev1").is_err());
    }

    #[test]
    fn registration_refusals_are_typed() {
        let dev1 = id(Role::Device, "dev1");
        assert!(matches!(
            may_register(&dev1, "dev2"),
            Err(RegisterRefusal::NotYourName { .. })
        ));
        assert!(matches!(
            may_register(&dev1, "DEV1"),
            Err(RegisterRefusal::BadName(_))
        ));
        assert!(matches!(
            may_register(&id(Role::Controller, "dev1"), "dev1"),
            Err(RegisterRefusal::RoleCannotRegister { .. })
        ));
        assert_eq!(
            may_register_port(0),
            Err(RegisterRefusal::NotADevicePort { port: 0 })
        );
        assert_eq!(
            may_register_port(65_536),
            Err(RegisterRefusal::NotADevicePort { port: 65_536 })
        );
        assert_eq!(may_register_port(65_535), Ok(()));
        assert_eq!(
            may_open_streams(&dev1),
            Err(Refusal::RoleCannotOpen { role: Role::Device })
        );
    }

    #[test]
    fn only_controllers_and_admins_open_streams() {
        assert!(may_open_streams(&id(Role::Device, "dev1")).is_err());
        assert!(may_open_streams(&id(Role::Controller, "alice")).is_ok());
        assert!(may_open_streams(&id(Role::Admin, "root")).is_ok());
    }
}
