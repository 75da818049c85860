//! PKCS#11 return values and what each means for Keyward, decided once here
//! (as parsec's `rv_to_response_status` does) so no caller matches on return
//! codes or parses an error string.
//!
//! [`classify`] turns a failed `cryptoki` call into a typed [`KmsError`]:
//! the token is busy, the token is gone, a handle is stale, a mechanism is
//! refused, or the call failed for another reason. The return value travels
//! as an [`Rv`] (its number, shown by its standard name), never as text.

use cryptoki::context::Function;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki_sys::*;

use crate::error::KmsError;

/// A PKCS#11 return value (`CK_RV`), kept as its number and shown by its
/// standard name (`CKR_DEVICE_ERROR`), or as hex for vendor codes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rv(u64);

impl Rv {
    /// The return value with this number.
    pub const fn new(code: u64) -> Self {
        Self(code)
    }

    /// Its number, as the module returned it.
    pub const fn code(self) -> u64 {
        self.0
    }

    /// Whether the module refused the call's arguments or mechanism
    /// parameter (`CKR_ARGUMENTS_BAD`, `CKR_MECHANISM_PARAM_INVALID`) rather
    /// than failing on the data.
    pub fn is_argument_error(self) -> bool {
        matches!(self.0, CKR_ARGUMENTS_BAD | CKR_MECHANISM_PARAM_INVALID)
    }

    /// Its standard name; `None` for vendor-defined or unknown codes.
    pub fn name(self) -> Option<&'static str> {
        rv_name(self.0)
    }
}

impl std::fmt::Display for Rv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "CK_RV 0x{:X}", self.0),
        }
    }
}

impl std::fmt::Debug for Rv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// What a failed PKCS#11 call means: the one place return values are sorted.
///
/// | return values | error | kind |
/// |---|---|---|
/// | `CKR_OBJECT_HANDLE_INVALID`, `CKR_KEY_HANDLE_INVALID` | [`KmsError::Stale`] (look the key up again) | unavailable |
/// | `CKR_SESSION_COUNT`, `CKR_DEVICE_MEMORY`, `CKR_HOST_MEMORY` | [`KmsError::HsmBusy`] | busy |
/// | `CKR_DEVICE_REMOVED`, `CKR_DEVICE_ERROR`, `CKR_TOKEN_NOT_PRESENT`, `CKR_TOKEN_NOT_RECOGNIZED`, `CKR_SESSION_CLOSED`, `CKR_SESSION_HANDLE_INVALID`, `CKR_USER_NOT_LOGGED_IN`, `CKR_CRYPTOKI_NOT_INITIALIZED`, `CKR_SLOT_ID_INVALID`, `CKR_PIN_LOCKED`, `CKR_PIN_EXPIRED` | [`KmsError::HsmUnavailable`] | unavailable |
/// | `CKR_MECHANISM_INVALID` | [`KmsError::MechanismRejected`] | internal |
/// | anything else | [`KmsError::Pkcs11`] | internal |
///
/// Errors of the `cryptoki` wrapper itself (no return value) become
/// [`KmsError::Hsm`]; their text is logged, not carried.
pub(crate) fn classify(e: CkError) -> KmsError {
    let (rv, function) = match e {
        CkError::Pkcs11(rv, function) => (rv, function_name(function)),
        other => {
            tracing::warn!(error = %other, "PKCS#11 wrapper error");
            return KmsError::Hsm {
                function: "cryptoki",
                problem: "the PKCS#11 wrapper refused the call",
            };
        }
    };
    match rv {
        RvError::ObjectHandleInvalid | RvError::KeyHandleInvalid => KmsError::Stale,
        RvError::SessionCount | RvError::DeviceMemory | RvError::HostMemory => KmsError::HsmBusy {
            function,
            rv: Rv(rv_code(rv)),
        },
        RvError::DeviceRemoved
        | RvError::DeviceError
        | RvError::TokenNotPresent
        | RvError::TokenNotRecognized
        | RvError::SessionClosed
        | RvError::SessionHandleInvalid
        | RvError::UserNotLoggedIn
        | RvError::CryptokiNotInitialized
        | RvError::SlotIdInvalid
        | RvError::PinLocked
        | RvError::PinExpired => KmsError::HsmUnavailable {
            function,
            rv: Rv(rv_code(rv)),
        },
        RvError::MechanismInvalid => KmsError::MechanismRejected { function },
        other => KmsError::Pkcs11 {
            function,
            rv: Rv(rv_code(other)),
        },
    }
}

/// The number of a `cryptoki` return value (the inverse of its `From<CK_RV>`).
fn rv_code(rv: RvError) -> CK_RV {
    match rv {
        RvError::Cancel => CKR_CANCEL,
        RvError::HostMemory => CKR_HOST_MEMORY,
        RvError::SlotIdInvalid => CKR_SLOT_ID_INVALID,
        RvError::GeneralError => CKR_GENERAL_ERROR,
        RvError::FunctionFailed => CKR_FUNCTION_FAILED,
        RvError::ArgumentsBad => CKR_ARGUMENTS_BAD,
        RvError::NoEvent => CKR_NO_EVENT,
        RvError::NeedToCreateThreads => CKR_NEED_TO_CREATE_THREADS,
        RvError::CantLock => CKR_CANT_LOCK,
        RvError::AttributeReadOnly => CKR_ATTRIBUTE_READ_ONLY,
        RvError::AttributeSensitive => CKR_ATTRIBUTE_SENSITIVE,
        RvError::AttributeTypeInvalid => CKR_ATTRIBUTE_TYPE_INVALID,
        RvError::AttributeValueInvalid => CKR_ATTRIBUTE_VALUE_INVALID,
        RvError::ActionProhibited => CKR_ACTION_PROHIBITED,
        RvError::DataInvalid => CKR_DATA_INVALID,
        RvError::DataLenRange => CKR_DATA_LEN_RANGE,
        RvError::DeviceError => CKR_DEVICE_ERROR,
        RvError::DeviceMemory => CKR_DEVICE_MEMORY,
        RvError::DeviceRemoved => CKR_DEVICE_REMOVED,
        RvError::EncryptedDataInvalid => CKR_ENCRYPTED_DATA_INVALID,
        RvError::EncryptedDataLenRange => CKR_ENCRYPTED_DATA_LEN_RANGE,
        RvError::FunctionCanceled => CKR_FUNCTION_CANCELED,
        RvError::FunctionNotParallel => CKR_FUNCTION_NOT_PARALLEL,
        RvError::FunctionNotSupported => CKR_FUNCTION_NOT_SUPPORTED,
        RvError::CurveNotSupported => CKR_CURVE_NOT_SUPPORTED,
        RvError::KeyHandleInvalid => CKR_KEY_HANDLE_INVALID,
        RvError::KeySizeRange => CKR_KEY_SIZE_RANGE,
        RvError::KeyTypeInconsistent => CKR_KEY_TYPE_INCONSISTENT,
        RvError::KeyNotNeeded => CKR_KEY_NOT_NEEDED,
        RvError::KeyChanged => CKR_KEY_CHANGED,
        RvError::KeyNeeded => CKR_KEY_NEEDED,
        RvError::KeyIndigestible => CKR_KEY_INDIGESTIBLE,
        RvError::KeyFunctionNotPermitted => CKR_KEY_FUNCTION_NOT_PERMITTED,
        RvError::KeyNotWrappable => CKR_KEY_NOT_WRAPPABLE,
        RvError::KeyUnextractable => CKR_KEY_UNEXTRACTABLE,
        RvError::MechanismInvalid => CKR_MECHANISM_INVALID,
        RvError::MechanismParamInvalid => CKR_MECHANISM_PARAM_INVALID,
        RvError::ObjectHandleInvalid => CKR_OBJECT_HANDLE_INVALID,
        RvError::OperationActive => CKR_OPERATION_ACTIVE,
        RvError::OperationNotInitialized => CKR_OPERATION_NOT_INITIALIZED,
        RvError::PinIncorrect => CKR_PIN_INCORRECT,
        RvError::PinInvalid => CKR_PIN_INVALID,
        RvError::PinLenRange => CKR_PIN_LEN_RANGE,
        RvError::PinExpired => CKR_PIN_EXPIRED,
        RvError::PinLocked => CKR_PIN_LOCKED,
        RvError::SessionClosed => CKR_SESSION_CLOSED,
        RvError::SessionCount => CKR_SESSION_COUNT,
        RvError::SessionHandleInvalid => CKR_SESSION_HANDLE_INVALID,
        RvError::SessionParallelNotSupported => CKR_SESSION_PARALLEL_NOT_SUPPORTED,
        RvError::SessionReadOnly => CKR_SESSION_READ_ONLY,
        RvError::SessionExists => CKR_SESSION_EXISTS,
        RvError::SessionReadOnlyExists => CKR_SESSION_READ_ONLY_EXISTS,
        RvError::SessionReadWriteSoExists => CKR_SESSION_READ_WRITE_SO_EXISTS,
        RvError::SignatureInvalid => CKR_SIGNATURE_INVALID,
        RvError::SignatureLenRange => CKR_SIGNATURE_LEN_RANGE,
        RvError::TemplateIncomplete => CKR_TEMPLATE_INCOMPLETE,
        RvError::TemplateInconsistent => CKR_TEMPLATE_INCONSISTENT,
        RvError::TokenNotPresent => CKR_TOKEN_NOT_PRESENT,
        RvError::TokenNotRecognized => CKR_TOKEN_NOT_RECOGNIZED,
        RvError::TokenWriteProtected => CKR_TOKEN_WRITE_PROTECTED,
        RvError::UnwrappingKeyHandleInvalid => CKR_UNWRAPPING_KEY_HANDLE_INVALID,
        RvError::UnwrappingKeySizeRange => CKR_UNWRAPPING_KEY_SIZE_RANGE,
        RvError::UserAlreadyLoggedIn => CKR_USER_ALREADY_LOGGED_IN,
        RvError::UserNotLoggedIn => CKR_USER_NOT_LOGGED_IN,
        RvError::UserPinNotInitialized => CKR_USER_PIN_NOT_INITIALIZED,
        RvError::UserTypeInvalid => CKR_USER_TYPE_INVALID,
        RvError::UserAnotherAlreadyLoggedIn => CKR_USER_ANOTHER_ALREADY_LOGGED_IN,
        RvError::UserTooManyTypes => CKR_USER_TOO_MANY_TYPES,
        RvError::WrappedKeyInvalid => CKR_WRAPPED_KEY_INVALID,
        RvError::WrappedKeyLenRange => CKR_WRAPPED_KEY_LEN_RANGE,
        RvError::WrappingKeyHandleInvalid => CKR_WRAPPING_KEY_HANDLE_INVALID,
        RvError::WrappingKeySizeRange => CKR_WRAPPING_KEY_SIZE_RANGE,
        RvError::WrappingKeyTypeInconsistent => CKR_WRAPPING_KEY_TYPE_INCONSISTENT,
        RvError::RandomSeedNotSupported => CKR_RANDOM_SEED_NOT_SUPPORTED,
        RvError::RandomNoRng => CKR_RANDOM_NO_RNG,
        RvError::DomainParamsInvalid => CKR_DOMAIN_PARAMS_INVALID,
        RvError::BufferTooSmall => CKR_BUFFER_TOO_SMALL,
        RvError::SavedStateInvalid => CKR_SAVED_STATE_INVALID,
        RvError::InformationSensitive => CKR_INFORMATION_SENSITIVE,
        RvError::StateUnsaveable => CKR_STATE_UNSAVEABLE,
        RvError::CryptokiNotInitialized => CKR_CRYPTOKI_NOT_INITIALIZED,
        RvError::CryptokiAlreadyInitialized => CKR_CRYPTOKI_ALREADY_INITIALIZED,
        RvError::MutexBad => CKR_MUTEX_BAD,
        RvError::MutexNotLocked => CKR_MUTEX_NOT_LOCKED,
        RvError::NewPinMode => CKR_NEW_PIN_MODE,
        RvError::NextOtp => CKR_NEXT_OTP,
        RvError::ExceededMaxIterations => CKR_EXCEEDED_MAX_ITERATIONS,
        RvError::FipsSelfTestFailed => CKR_FIPS_SELF_TEST_FAILED,
        RvError::LibraryLoadFailed => CKR_LIBRARY_LOAD_FAILED,
        RvError::PinTooWeak => CKR_PIN_TOO_WEAK,
        RvError::PublicKeyInvalid => CKR_PUBLIC_KEY_INVALID,
        RvError::FunctionRejected => CKR_FUNCTION_REJECTED,
        RvError::UnwrappingKeyTypeInconsistent => CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT,
        RvError::VendorDefined(code) | RvError::UnknownErrorCode(code) => code,
    }
}

fn rv_name(code: CK_RV) -> Option<&'static str> {
    Some(match code {
        CKR_CANCEL => "CKR_CANCEL",
        CKR_HOST_MEMORY => "CKR_HOST_MEMORY",
        CKR_SLOT_ID_INVALID => "CKR_SLOT_ID_INVALID",
        CKR_GENERAL_ERROR => "CKR_GENERAL_ERROR",
        CKR_FUNCTION_FAILED => "CKR_FUNCTION_FAILED",
        CKR_ARGUMENTS_BAD => "CKR_ARGUMENTS_BAD",
        CKR_NO_EVENT => "CKR_NO_EVENT",
        CKR_NEED_TO_CREATE_THREADS => "CKR_NEED_TO_CREATE_THREADS",
        CKR_CANT_LOCK => "CKR_CANT_LOCK",
        CKR_ATTRIBUTE_READ_ONLY => "CKR_ATTRIBUTE_READ_ONLY",
        CKR_ATTRIBUTE_SENSITIVE => "CKR_ATTRIBUTE_SENSITIVE",
        CKR_ATTRIBUTE_TYPE_INVALID => "CKR_ATTRIBUTE_TYPE_INVALID",
        CKR_ATTRIBUTE_VALUE_INVALID => "CKR_ATTRIBUTE_VALUE_INVALID",
        CKR_ACTION_PROHIBITED => "CKR_ACTION_PROHIBITED",
        CKR_DATA_INVALID => "CKR_DATA_INVALID",
        CKR_DATA_LEN_RANGE => "CKR_DATA_LEN_RANGE",
        CKR_DEVICE_ERROR => "CKR_DEVICE_ERROR",
        CKR_DEVICE_MEMORY => "CKR_DEVICE_MEMORY",
        CKR_DEVICE_REMOVED => "CKR_DEVICE_REMOVED",
        CKR_ENCRYPTED_DATA_INVALID => "CKR_ENCRYPTED_DATA_INVALID",
        CKR_ENCRYPTED_DATA_LEN_RANGE => "CKR_ENCRYPTED_DATA_LEN_RANGE",
        CKR_FUNCTION_CANCELED => "CKR_FUNCTION_CANCELED",
        CKR_FUNCTION_NOT_PARALLEL => "CKR_FUNCTION_NOT_PARALLEL",
        CKR_FUNCTION_NOT_SUPPORTED => "CKR_FUNCTION_NOT_SUPPORTED",
        CKR_CURVE_NOT_SUPPORTED => "CKR_CURVE_NOT_SUPPORTED",
        CKR_KEY_HANDLE_INVALID => "CKR_KEY_HANDLE_INVALID",
        CKR_KEY_SIZE_RANGE => "CKR_KEY_SIZE_RANGE",
        CKR_KEY_TYPE_INCONSISTENT => "CKR_KEY_TYPE_INCONSISTENT",
        CKR_KEY_NOT_NEEDED => "CKR_KEY_NOT_NEEDED",
        CKR_KEY_CHANGED => "CKR_KEY_CHANGED",
        CKR_KEY_NEEDED => "CKR_KEY_NEEDED",
        CKR_KEY_INDIGESTIBLE => "CKR_KEY_INDIGESTIBLE",
        CKR_KEY_FUNCTION_NOT_PERMITTED => "CKR_KEY_FUNCTION_NOT_PERMITTED",
        CKR_KEY_NOT_WRAPPABLE => "CKR_KEY_NOT_WRAPPABLE",
        CKR_KEY_UNEXTRACTABLE => "CKR_KEY_UNEXTRACTABLE",
        CKR_MECHANISM_INVALID => "CKR_MECHANISM_INVALID",
        CKR_MECHANISM_PARAM_INVALID => "CKR_MECHANISM_PARAM_INVALID",
        CKR_OBJECT_HANDLE_INVALID => "CKR_OBJECT_HANDLE_INVALID",
        CKR_OPERATION_ACTIVE => "CKR_OPERATION_ACTIVE",
        CKR_OPERATION_NOT_INITIALIZED => "CKR_OPERATION_NOT_INITIALIZED",
        CKR_PIN_INCORRECT => "CKR_PIN_INCORRECT",
        CKR_PIN_INVALID => "CKR_PIN_INVALID",
        CKR_PIN_LEN_RANGE => "CKR_PIN_LEN_RANGE",
        CKR_PIN_EXPIRED => "CKR_PIN_EXPIRED",
        CKR_PIN_LOCKED => "CKR_PIN_LOCKED",
        CKR_SESSION_CLOSED => "CKR_SESSION_CLOSED",
        CKR_SESSION_COUNT => "CKR_SESSION_COUNT",
        CKR_SESSION_HANDLE_INVALID => "CKR_SESSION_HANDLE_INVALID",
        CKR_SESSION_PARALLEL_NOT_SUPPORTED => "CKR_SESSION_PARALLEL_NOT_SUPPORTED",
        CKR_SESSION_READ_ONLY => "CKR_SESSION_READ_ONLY",
        CKR_SESSION_EXISTS => "CKR_SESSION_EXISTS",
        CKR_SESSION_READ_ONLY_EXISTS => "CKR_SESSION_READ_ONLY_EXISTS",
        CKR_SESSION_READ_WRITE_SO_EXISTS => "CKR_SESSION_READ_WRITE_SO_EXISTS",
        CKR_SIGNATURE_INVALID => "CKR_SIGNATURE_INVALID",
        CKR_SIGNATURE_LEN_RANGE => "CKR_SIGNATURE_LEN_RANGE",
        CKR_TEMPLATE_INCOMPLETE => "CKR_TEMPLATE_INCOMPLETE",
        CKR_TEMPLATE_INCONSISTENT => "CKR_TEMPLATE_INCONSISTENT",
        CKR_TOKEN_NOT_PRESENT => "CKR_TOKEN_NOT_PRESENT",
        CKR_TOKEN_NOT_RECOGNIZED => "CKR_TOKEN_NOT_RECOGNIZED",
        CKR_TOKEN_WRITE_PROTECTED => "CKR_TOKEN_WRITE_PROTECTED",
        CKR_UNWRAPPING_KEY_HANDLE_INVALID => "CKR_UNWRAPPING_KEY_HANDLE_INVALID",
        CKR_UNWRAPPING_KEY_SIZE_RANGE => "CKR_UNWRAPPING_KEY_SIZE_RANGE",
        CKR_USER_ALREADY_LOGGED_IN => "CKR_USER_ALREADY_LOGGED_IN",
        CKR_USER_NOT_LOGGED_IN => "CKR_USER_NOT_LOGGED_IN",
        CKR_USER_PIN_NOT_INITIALIZED => "CKR_USER_PIN_NOT_INITIALIZED",
        CKR_USER_TYPE_INVALID => "CKR_USER_TYPE_INVALID",
        CKR_USER_ANOTHER_ALREADY_LOGGED_IN => "CKR_USER_ANOTHER_ALREADY_LOGGED_IN",
        CKR_USER_TOO_MANY_TYPES => "CKR_USER_TOO_MANY_TYPES",
        CKR_WRAPPED_KEY_INVALID => "CKR_WRAPPED_KEY_INVALID",
        CKR_WRAPPED_KEY_LEN_RANGE => "CKR_WRAPPED_KEY_LEN_RANGE",
        CKR_WRAPPING_KEY_HANDLE_INVALID => "CKR_WRAPPING_KEY_HANDLE_INVALID",
        CKR_WRAPPING_KEY_SIZE_RANGE => "CKR_WRAPPING_KEY_SIZE_RANGE",
        CKR_WRAPPING_KEY_TYPE_INCONSISTENT => "CKR_WRAPPING_KEY_TYPE_INCONSISTENT",
        CKR_RANDOM_SEED_NOT_SUPPORTED => "CKR_RANDOM_SEED_NOT_SUPPORTED",
        CKR_RANDOM_NO_RNG => "CKR_RANDOM_NO_RNG",
        CKR_DOMAIN_PARAMS_INVALID => "CKR_DOMAIN_PARAMS_INVALID",
        CKR_BUFFER_TOO_SMALL => "CKR_BUFFER_TOO_SMALL",
        CKR_SAVED_STATE_INVALID => "CKR_SAVED_STATE_INVALID",
        CKR_INFORMATION_SENSITIVE => "CKR_INFORMATION_SENSITIVE",
        CKR_STATE_UNSAVEABLE => "CKR_STATE_UNSAVEABLE",
        CKR_CRYPTOKI_NOT_INITIALIZED => "CKR_CRYPTOKI_NOT_INITIALIZED",
        CKR_CRYPTOKI_ALREADY_INITIALIZED => "CKR_CRYPTOKI_ALREADY_INITIALIZED",
        CKR_MUTEX_BAD => "CKR_MUTEX_BAD",
        CKR_MUTEX_NOT_LOCKED => "CKR_MUTEX_NOT_LOCKED",
        CKR_NEW_PIN_MODE => "CKR_NEW_PIN_MODE",
        CKR_NEXT_OTP => "CKR_NEXT_OTP",
        CKR_EXCEEDED_MAX_ITERATIONS => "CKR_EXCEEDED_MAX_ITERATIONS",
        CKR_FIPS_SELF_TEST_FAILED => "CKR_FIPS_SELF_TEST_FAILED",
        CKR_LIBRARY_LOAD_FAILED => "CKR_LIBRARY_LOAD_FAILED",
        CKR_PIN_TOO_WEAK => "CKR_PIN_TOO_WEAK",
        CKR_PUBLIC_KEY_INVALID => "CKR_PUBLIC_KEY_INVALID",
        CKR_FUNCTION_REJECTED => "CKR_FUNCTION_REJECTED",
        CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT => "CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT",
        _ => return None,
    })
}

/// The C name of a PKCS#11 function (`C_Sign`), for errors and logs.
pub(crate) fn function_name(f: Function) -> &'static str {
    match f {
        Function::Initialize => "C_Initialize",
        Function::Finalize => "C_Finalize",
        Function::GetInfo => "C_GetInfo",
        Function::GetFunctionList => "C_GetFunctionList",
        Function::GetSlotList => "C_GetSlotList",
        Function::GetSlotInfo => "C_GetSlotInfo",
        Function::GetTokenInfo => "C_GetTokenInfo",
        Function::GetMechanismList => "C_GetMechanismList",
        Function::GetMechanismInfo => "C_GetMechanismInfo",
        Function::InitToken => "C_InitToken",
        Function::InitPIN => "C_InitPIN",
        Function::SetPIN => "C_SetPIN",
        Function::OpenSession => "C_OpenSession",
        Function::CloseSession => "C_CloseSession",
        Function::CloseAllSessions => "C_CloseAllSessions",
        Function::GetSessionInfo => "C_GetSessionInfo",
        Function::GetOperationState => "C_GetOperationState",
        Function::SetOperationState => "C_SetOperationState",
        Function::Login => "C_Login",
        Function::Logout => "C_Logout",
        Function::CreateObject => "C_CreateObject",
        Function::CopyObject => "C_CopyObject",
        Function::DestroyObject => "C_DestroyObject",
        Function::GetObjectSize => "C_GetObjectSize",
        Function::GetAttributeValue => "C_GetAttributeValue",
        Function::SetAttributeValue => "C_SetAttributeValue",
        Function::FindObjectsInit => "C_FindObjectsInit",
        Function::FindObjects => "C_FindObjects",
        Function::FindObjectsFinal => "C_FindObjectsFinal",
        Function::EncryptInit => "C_EncryptInit",
        Function::Encrypt => "C_Encrypt",
        Function::EncryptUpdate => "C_EncryptUpdate",
        Function::EncryptFinal => "C_EncryptFinal",
        Function::DecryptInit => "C_DecryptInit",
        Function::Decrypt => "C_Decrypt",
        Function::DecryptUpdate => "C_DecryptUpdate",
        Function::DecryptFinal => "C_DecryptFinal",
        Function::DigestInit => "C_DigestInit",
        Function::Digest => "C_Digest",
        Function::DigestUpdate => "C_DigestUpdate",
        Function::DigestKey => "C_DigestKey",
        Function::DigestFinal => "C_DigestFinal",
        Function::SignInit => "C_SignInit",
        Function::Sign => "C_Sign",
        Function::SignUpdate => "C_SignUpdate",
        Function::SignFinal => "C_SignFinal",
        Function::SignRecoverInit => "C_SignRecoverInit",
        Function::SignRecover => "C_SignRecover",
        Function::VerifyInit => "C_VerifyInit",
        Function::Verify => "C_Verify",
        Function::VerifyUpdate => "C_VerifyUpdate",
        Function::VerifyFinal => "C_VerifyFinal",
        Function::VerifyRecoverInit => "C_VerifyRecoverInit",
        Function::VerifyRecover => "C_VerifyRecover",
        Function::DigestEncryptUpdate => "C_DigestEncryptUpdate",
        Function::DecryptDigestUpdate => "C_DecryptDigestUpdate",
        Function::SignEncryptUpdate => "C_SignEncryptUpdate",
        Function::DecryptVerifyUpdate => "C_DecryptVerifyUpdate",
        Function::GenerateKey => "C_GenerateKey",
        Function::GenerateKeyPair => "C_GenerateKeyPair",
        Function::WrapKey => "C_WrapKey",
        Function::UnwrapKey => "C_UnwrapKey",
        Function::DeriveKey => "C_DeriveKey",
        Function::SeedRandom => "C_SeedRandom",
        Function::GenerateRandom => "C_GenerateRandom",
        Function::GetFunctionStatus => "C_GetFunctionStatus",
        Function::CancelFunction => "C_CancelFunction",
        Function::WaitForSlotEvent => "C_WaitForSlotEvent",
        Function::GetInterfaceList => "C_GetInterfaceList",
        Function::GetInterface => "C_GetInterface",
        Function::LoginUser => "C_LoginUser",
        Function::SessionCancel => "C_SessionCancel",
        Function::MessageEncryptInit => "C_MessageEncryptInit",
        Function::EncryptMessage => "C_EncryptMessage",
        Function::EncryptMessageBegin => "C_EncryptMessageBegin",
        Function::EncryptMessageNext => "C_EncryptMessageNext",
        Function::MessageEncryptFinal => "C_MessageEncryptFinal",
        Function::MessageDecryptInit => "C_MessageDecryptInit",
        Function::DecryptMessage => "C_DecryptMessage",
        Function::DecryptMessageBegin => "C_DecryptMessageBegin",
        Function::DecryptMessageNext => "C_DecryptMessageNext",
        Function::MessageDecryptFinal => "C_MessageDecryptFinal",
        Function::MessageSignInit => "C_MessageSignInit",
        Function::SignMessage => "C_SignMessage",
        Function::SignMessageBegin => "C_SignMessageBegin",
        Function::SignMessageNext => "C_SignMessageNext",
        Function::MessageSignFinal => "C_MessageSignFinal",
        Function::MessageVerifyInit => "C_MessageVerifyInit",
        Function::VerifyMessage => "C_VerifyMessage",
        Function::VerifyMessageBegin => "C_VerifyMessageBegin",
        Function::VerifyMessageNext => "C_VerifyMessageNext",
        Function::MessageVerifyFinal => "C_MessageVerifyFinal",
        Function::EncapsulateKey => "C_EncapsulateKey",
        Function::DecapsulateKey => "C_DecapsulateKey",
        Function::VerifySignatureInit => "C_VerifySignatureInit",
        Function::VerifySignature => "C_VerifySignature",
        Function::VerifySignatureUpdate => "C_VerifySignatureUpdate",
        Function::VerifySignatureFinal => "C_VerifySignatureFinal",
        Function::GetSessionValidationFlags => "C_GetSessionValidationFlags",
        Function::AsyncComplete => "C_AsyncComplete",
        Function::AsyncGetID => "C_AsyncGetID",
        Function::AsyncJoin => "C_AsyncJoin",
        Function::WrapKeyAuthenticated => "C_WrapKeyAuthenticated",
        Function::UnwrapKeyAuthenticated => "C_UnwrapKeyAuthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_values_are_sorted_by_meaning() {
        let busy = classify(CkError::Pkcs11(
            RvError::SessionCount,
            Function::OpenSession,
        ));
        assert_eq!(busy.kind(), crate::ErrorKind::Busy);
        assert_eq!(busy.code(), "hsm_busy");
        let gone = classify(CkError::Pkcs11(RvError::DeviceRemoved, Function::Sign));
        assert_eq!(gone.kind(), crate::ErrorKind::Unavailable);
        assert!(matches!(
            classify(CkError::Pkcs11(
                RvError::KeyHandleInvalid,
                Function::Encrypt
            )),
            KmsError::Stale
        ));
        assert!(matches!(
            classify(CkError::Pkcs11(
                RvError::MechanismInvalid,
                Function::SignInit
            )),
            KmsError::MechanismRejected {
                function: "C_SignInit"
            }
        ));
        let other = classify(CkError::Pkcs11(RvError::DataLenRange, Function::Encrypt));
        assert_eq!(other.kind(), crate::ErrorKind::Internal);
        assert_eq!(
            other.to_string(),
            "HSM call C_Encrypt failed: CKR_DATA_LEN_RANGE"
        );
    }

    #[test]
    fn codes_and_names_round_trip() {
        assert_eq!(rv_code(RvError::DeviceError), CKR_DEVICE_ERROR);
        assert_eq!(Rv::new(CKR_SESSION_COUNT).to_string(), "CKR_SESSION_COUNT");
        assert_eq!(Rv::new(CKR_VENDOR_DEFINED + 1).name(), None);
        assert_eq!(
            Rv::new(CKR_VENDOR_DEFINED + 1).to_string(),
            "CK_RV 0x80000001"
        );
    }
}
