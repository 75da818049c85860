//! The audited escape hatch: the few PKCS#11 calls `cryptoki` 0.12 cannot
//! express, because it only accepts standard-range mechanism numbers it knows
//! (`CKM_DES3_ECB_ENCRYPT_DATA`, `CKM_AES_ECB_ENCRYPT_DATA`, `CKM_DES3_CMAC`,
//! and vendor numbers given in configuration).
//!
//! The module is opened a second time with `dlopen`, which returns the same
//! loaded library, so it shares the `C_Initialize` state, sessions and object
//! handles of the `cryptoki` context. Every `unsafe` block below passes only
//! pointers to live, correctly sized Rust buffers, and lengths that match them.
#![allow(unsafe_code)]

use std::path::Path;

use cryptoki::context::Function;
use cryptoki::error::{Error as CkError, Rv};
use cryptoki::object::{Attribute, ObjectHandle};
use cryptoki::session::Session;
use cryptoki_sys::{
    CK_ATTRIBUTE, CK_KEY_DERIVATION_STRING_DATA, CK_MECHANISM, CK_OBJECT_HANDLE, CK_ULONG,
};

/// Raw function table of the PKCS#11 module.
pub(crate) struct RawModule {
    lib: cryptoki_sys::Pkcs11,
}

impl std::fmt::Debug for RawModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RawModule")
    }
}

fn check(rv: cryptoki_sys::CK_RV, function: Function) -> Result<(), CkError> {
    Rv::from(rv).into_result(function)
}

impl RawModule {
    /// Opens the module's function table. The caller has already loaded and
    /// initialised the same path through `cryptoki`.
    pub(crate) fn open(path: &Path) -> Result<Self, String> {
        // SAFETY: loading a shared library runs its initialisers; this is the
        // same library `cryptoki` already loaded from the same path.
        let lib = unsafe { cryptoki_sys::Pkcs11::new(path) }.map_err(|e| e.to_string())?;
        Ok(Self { lib })
    }

    /// `C_GetMechanismList`, unfiltered (cryptoki drops numbers it does not know).
    pub(crate) fn mechanism_list(&self, slot: u64) -> Result<Vec<u64>, CkError> {
        let mut count: CK_ULONG = 0;
        // SAFETY: a null list pointer asks for the count only.
        check(
            unsafe {
                self.lib
                    .C_GetMechanismList(slot, std::ptr::null_mut(), &mut count)
            },
            Function::GetMechanismList,
        )?;
        let mut list = vec![0 as CK_ULONG; count as usize];
        // SAFETY: `list` holds `count` elements.
        check(
            unsafe {
                self.lib
                    .C_GetMechanismList(slot, list.as_mut_ptr(), &mut count)
            },
            Function::GetMechanismList,
        )?;
        list.truncate(count as usize);
        Ok(list)
    }

    /// `C_DeriveKey` with a `CK_KEY_DERIVATION_STRING_DATA` parameter, the shape
    /// of every `*_ECB_ENCRYPT_DATA` mechanism.
    pub(crate) fn derive_encrypt_data(
        &self,
        session: &Session,
        mechanism: u64,
        base: ObjectHandle,
        data: &[u8],
        template: &[Attribute],
    ) -> Result<ObjectHandle, CkError> {
        let mut data = data.to_vec();
        let mut param = CK_KEY_DERIVATION_STRING_DATA {
            pData: data.as_mut_ptr(),
            ulLen: data.len() as CK_ULONG,
        };
        let mut mech = CK_MECHANISM {
            mechanism,
            pParameter: (&mut param as *mut CK_KEY_DERIVATION_STRING_DATA).cast(),
            ulParameterLen: std::mem::size_of::<CK_KEY_DERIVATION_STRING_DATA>() as CK_ULONG,
        };
        let mut attrs: Vec<CK_ATTRIBUTE> = template.iter().map(Into::into).collect();
        let mut handle: CK_OBJECT_HANDLE = 0;
        // SAFETY: `mech`, `param`, `data` and `attrs` (which borrows `template`)
        // outlive the call; counts match the buffers.
        check(
            unsafe {
                self.lib.C_DeriveKey(
                    session.handle(),
                    &mut mech,
                    base.handle(),
                    attrs.as_mut_ptr(),
                    attrs.len() as CK_ULONG,
                    &mut handle,
                )
            },
            Function::DeriveKey,
        )?;
        // SAFETY: the handle was just returned by the module for this application.
        Ok(unsafe { ObjectHandle::new_from_raw(handle) })
    }

    /// `C_SignInit` + `C_Sign` with a parameterless mechanism (CMAC, vendor MACs).
    pub(crate) fn sign(
        &self,
        session: &Session,
        mechanism: u64,
        key: ObjectHandle,
        data: &[u8],
    ) -> Result<Vec<u8>, CkError> {
        let mut mech = CK_MECHANISM {
            mechanism,
            pParameter: std::ptr::null_mut(),
            ulParameterLen: 0,
        };
        // SAFETY: `mech` outlives the call; the key handle belongs to this application.
        check(
            unsafe {
                self.lib
                    .C_SignInit(session.handle(), &mut mech, key.handle())
            },
            Function::SignInit,
        )?;
        let mut out = vec![0u8; 64];
        let mut out_len = out.len() as CK_ULONG;
        let mut input = data.to_vec();
        // SAFETY: `input` and `out` are live buffers of the lengths passed.
        check(
            unsafe {
                self.lib.C_Sign(
                    session.handle(),
                    input.as_mut_ptr(),
                    input.len() as CK_ULONG,
                    out.as_mut_ptr(),
                    &mut out_len,
                )
            },
            Function::Sign,
        )?;
        out.truncate(out_len as usize);
        Ok(out)
    }

    /// `C_CloseAllSessions`: what an HSM restart looks like from here. Used by
    /// the operator-triggered session reset and by the healing tests.
    pub(crate) fn close_all_sessions(&self, slot: u64) -> Result<(), CkError> {
        // SAFETY: plain call with a slot id.
        check(
            unsafe { self.lib.C_CloseAllSessions(slot) },
            Function::CloseAllSessions,
        )
    }
}
